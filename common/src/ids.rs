//! Identifiers in the forms AWS uses.

use rand::{distributions::Uniform, Rng};

/// `prefix-` and 17 lowercase hex digits, like `i-0123456789abcdef0`.
pub fn resource_id(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let hex: String = (0..17)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect();
    format!("{prefix}-{hex}")
}

/// Whether `id` has the shape of a resource id with one of `prefixes`:
/// `prefix-` and 8 or 17 hex digits (AWS's short and long ids).
pub fn well_formed(id: &str, prefixes: &[&str]) -> bool {
    id.split_once('-').is_some_and(|(p, h)| {
        prefixes.contains(&p)
            && (h.len() == 8 || h.len() == 17)
            && h.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// A 12-digit account id that does not start with 0.
pub fn account_id() -> String {
    let mut rng = rand::thread_rng();
    format!(
        "{}",
        rng.gen_range(100_000_000_000u64..1_000_000_000_000u64)
    )
}

/// An access key id: `AKIA` and 16 characters of `A-Z2-7`.
pub fn access_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    format!("AKIA{}", pick(ALPHABET, 16))
}

/// A 40-character secret access key.
pub fn secret_access_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pick(ALPHABET, 40)
}

fn pick(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::thread_rng();
    let dist = Uniform::from(0..alphabet.len());
    (0..len)
        .map(|_| alphabet[rng.sample(dist)] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_aws_shapes() {
        let id = resource_id("i");
        assert_eq!(id.len(), 19);
        assert!(id[2..].chars().all(|c| c.is_ascii_hexdigit()));
        let acct = account_id();
        assert_eq!(acct.len(), 12);
        assert!(acct.chars().all(|c| c.is_ascii_digit()));
        let ak = access_key_id();
        assert_eq!(ak.len(), 20);
        assert!(ak.starts_with("AKIA"));
        assert_eq!(secret_access_key().len(), 40);
        assert!(well_formed(&id, &["i"]));
        assert!(well_formed("sg-12345678", &["sg"]));
        assert!(!well_formed("sg-1234567", &["sg"]));
        assert!(!well_formed("sg-12345678", &["i"]));
        assert!(!well_formed("i-xyz12345", &["i"]));
    }
}
