//! What a node's guests use of it: each guest's CPU time (from libvirt)
//! between two samples, as cores kept busy, and the host's CPU use from
//! /proc/stat. Reported up (NodeReport.load) for the administrators and
//! the cloud's rebalancing.

use std::{collections::HashMap, time::Instant};

use proto::{GuestLoad, NodeLoad};

/// The last sample, to take the next one's differences from.
#[derive(Debug, Default)]
pub struct LoadSampler {
    last: Option<(Instant, HashMap<String, u64>)>,
    last_host: Option<(u64, u64)>,
}

/// The host's CPU counters from /proc/stat: (busy, total) jiffies.
pub fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

impl LoadSampler {
    /// A sample at `now` of each guest's (name, CPU ns, memory KiB) and the
    /// host's counters: the load since the previous sample (None for the
    /// first). A guest new since then counts from this sample on.
    pub fn sample(
        &mut self,
        now: Instant,
        now_ms: i64,
        guests: &[(String, u64, u64)],
        host: Option<(u64, u64)>,
    ) -> Option<NodeLoad> {
        let times: HashMap<String, u64> = guests.iter().map(|(n, t, _)| (n.clone(), *t)).collect();
        let previous = self.last.replace((now, times));
        let previous_host = std::mem::replace(&mut self.last_host, host);
        let (then, before) = previous?;
        let secs = now.duration_since(then).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let mut load = NodeLoad {
            sampled_unix_ms: now_ms,
            ..Default::default()
        };
        for (name, ns, mem_kib) in guests {
            let Some(was) = before.get(name) else {
                continue;
            };
            let cores = ns.saturating_sub(*was) as f64 / 1e9 / secs;
            load.cpu_busy_cores += cores;
            load.guests.push(GuestLoad {
                instance_id: name.clone(),
                cpu_cores: (cores * 100.0).round() / 100.0,
                memory_mib: mem_kib / 1024,
            });
        }
        load.cpu_busy_cores = (load.cpu_busy_cores * 100.0).round() / 100.0;
        if let (Some((b0, t0)), Some((b1, t1))) = (previous_host, host) {
            if t1 > t0 {
                load.host_cpu_percent =
                    ((b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64 * 1000.0).round() / 10.0;
            }
        }
        Some(load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn guests_cpu_time_over_the_period_is_cores_kept_busy() {
        let mut s = LoadSampler::default();
        let t0 = Instant::now();
        let g = |n: &str, secs: f64| (n.to_string(), (secs * 1e9) as u64, 262_144);
        assert!(s
            .sample(t0, 0, &[g("i-1", 10.0), g("i-2", 1.0)], Some((100, 1000)))
            .is_none());
        let load = s
            .sample(
                t0 + Duration::from_secs(5),
                5_000,
                &[g("i-1", 15.0), g("i-2", 1.5), g("i-3", 3.0)],
                Some((600, 2000)),
            )
            .expect("a load");
        // i-1 busy for 5 s of 5, i-2 for 0.5 s; i-3 is new: from now on.
        assert_eq!(load.cpu_busy_cores, 1.1);
        let cores: Vec<(String, f64)> = load
            .guests
            .iter()
            .map(|g| (g.instance_id.clone(), g.cpu_cores))
            .collect();
        assert_eq!(cores, vec![("i-1".into(), 1.0), ("i-2".into(), 0.1)]);
        assert_eq!(load.guests[0].memory_mib, 256);
        assert_eq!(load.host_cpu_percent, 50.0);
        assert_eq!(load.sampled_unix_ms, 5_000);
    }
}
