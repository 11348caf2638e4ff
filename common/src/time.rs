//! Wall-clock helpers: Unix times and ISO 8601 formatting without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    unix_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-23T01:02:03.456Z` for Unix milliseconds (UTC), as AWS prints times.
pub fn iso8601_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `20130524T000000Z` for Unix seconds, as SigV4 writes dates.
pub fn amz_date(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Unix seconds of `20130524T000000Z`.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    from_civil(y, mo, d, h, mi, se)
}

/// Unix seconds of an HTTP date: `Fri, 24 May 2013 00:00:00 GMT` (RFC 1123),
/// also without the weekday.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let s = s.split_once(", ").map_or(s, |(_, rest)| rest);
    let mut parts = s.split_whitespace();
    let d: i64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let mo = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m.eq_ignore_ascii_case(month))? as i64
        + 1;
    let y: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, se) = (hms.next()??, hms.next()??, hms.next()??);
    match parts.next() {
        Some("GMT") | Some("UTC") | Some("+0000") | None => from_civil(y, mo, d, h, mi, se),
        _ => None,
    }
}

/// `Fri, 24 May 2013 00:00:00 GMT` for Unix seconds (HTTP `Last-Modified`).
pub fn http_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let rem = secs.rem_euclid(86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][m as usize - 1];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses ISO 8601 as EC2 clients send it: `2011-10-03T15:19:30Z`, with or
/// without fractional seconds, `Z` or a `+hh:mm` offset, or none (UTC).
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset) = if let Some(c) = rest.strip_suffix('Z') {
        (c, 0)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (c, off) = rest.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let mut hm = off[1..].split(':').map(|p| p.parse::<i64>().ok());
        let (oh, om) = (hm.next()??, hm.next().flatten().unwrap_or(0));
        (c, sign * (oh * 3600 + om * 60))
    } else {
        (rest, 0)
    };
    let clock = clock.split('.').next()?;
    let mut t = clock.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, sec) = (t.next()??, t.next()??, t.next()??);
    Some(from_civil(y, mo, day, h, mi, sec)? - offset)
}

fn from_civil(y: i64, m: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

/// Proleptic Gregorian date for days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z: a leap day.
        assert_eq!(iso8601_ms(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(iso8601_ms(1_795_392_000_000), "2026-11-23T00:00:00.000Z");
    }

    #[test]
    fn parses_iso8601_as_ec2_clients_send_it() {
        let t = 1_317_655_170; // 2011-10-03T15:19:30Z
        assert_eq!(parse_iso8601("2011-10-03T15:19:30Z"), Some(t));
        assert_eq!(parse_iso8601("2011-10-03T15:19:30.123Z"), Some(t));
        assert_eq!(parse_iso8601("2011-10-03T15:19:30"), Some(t));
        assert_eq!(parse_iso8601("2011-10-03T17:19:30+02:00"), Some(t));
        assert_eq!(parse_iso8601("2011-10-03 15:19:30"), None);
        assert_eq!(parse_iso8601("nope"), None);
    }

    #[test]
    fn parses_and_formats_aws_and_http_dates() {
        assert_eq!(parse_amz_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(parse_amz_date("20130524T000000"), None);
        assert_eq!(parse_amz_date("2013052xT000000Z"), None);
        assert_eq!(
            parse_http_date("Fri, 24 May 2013 00:00:00 GMT"),
            Some(1_369_353_600)
        );
        assert_eq!(http_date(1_369_353_600), "Fri, 24 May 2013 00:00:00 GMT");
        assert_eq!(parse_http_date("Fri, 24 Mai 2013 00:00:00 GMT"), None);
        assert_eq!(parse_http_date("Fri, 24 May 2013 00:00:00 CET"), None);
        assert_eq!(http_date(951_827_696), "Tue, 29 Feb 2000 12:34:56 GMT");
    }
}
