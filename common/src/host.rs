//! What this host offers: cores, memory and disk.

use std::{io, path::Path};

/// Number of CPUs this process may use.
pub fn cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// Total memory in MiB, from `/proc/meminfo`.
pub fn memory_mib() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo_total_kib(&text)
        .map(|kib| kib / 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no MemTotal in /proc/meminfo"))
}

fn parse_meminfo_total_kib(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Total and available GiB of the file system holding `path`.
pub fn disk_gib(path: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frag = st.fragment_size() as u64;
    let gib = 1024 * 1024 * 1024;
    Ok((
        st.blocks() as u64 * frag / gib,
        st.blocks_available() as u64 * frag / gib,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host() {
        assert!(cores() >= 1);
        assert!(memory_mib().expect("meminfo") > 0);
        let (total, free) = disk_gib(Path::new("/")).expect("statvfs");
        assert!(total >= free);
        assert_eq!(
            parse_meminfo_total_kib("MemFree: 1 kB\nMemTotal:   2048 kB\n"),
            Some(2048)
        );
    }
}
