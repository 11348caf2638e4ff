//! The capacity this node offers, from configuration or the host itself.

use std::path::Path;

use proto::Resources;

use crate::config::NodeConfig;

/// Totals from config where set, else measured on the host. Free capacity
/// is the total less what instances hold (none are placed yet).
pub fn measure(config: &NodeConfig, instance_dir: &Path) -> std::io::Result<Resources> {
    let cores = if config.cores > 0 {
        config.cores
    } else {
        common::host::cores()
    };
    let memory = if config.memory_mib > 0 {
        config.memory_mib
    } else {
        common::host::memory_mib()?
    };
    let (disk_total, disk_free) = common::host::disk_gib(instance_dir)?;
    let (disk_total, disk_free) = if config.disk_gib > 0 {
        (config.disk_gib, config.disk_gib.min(disk_free))
    } else {
        (disk_total, disk_free)
    };
    Ok(Resources {
        cores_total: cores,
        cores_free: cores,
        memory_mib_total: memory,
        memory_mib_free: memory,
        disk_gib_total: disk_total,
        disk_gib_free: disk_free,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_totals_win_over_the_host() {
        let config = NodeConfig {
            cores: 3,
            memory_mib: 1024,
            disk_gib: 1,
            ..NodeConfig::default()
        };
        let r = measure(&config, Path::new("/")).expect("measure");
        assert_eq!((r.cores_total, r.cores_free), (3, 3));
        assert_eq!((r.memory_mib_total, r.memory_mib_free), (1024, 1024));
        assert_eq!(r.disk_gib_total, 1);
        assert!(r.disk_gib_free <= 1);
        let host = measure(&NodeConfig::default(), Path::new("/")).expect("measure");
        assert_eq!(host.cores_total, common::host::cores());
    }
}
