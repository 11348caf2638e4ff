//! The node's metric samples: every `sample_secs`, what each guest used
//! (CPU as a percent of its vCPUs, disk and network I/O, each EBS volume's
//! I/O, memory) and what the host did (CPU, memory, disk, network), from
//! the differences of libvirt's and the kernel's counters between two
//! samples. The samples of the last minute ride up on every report
//! (NodeReport.samples); the cloud controller stores each once.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    time::Instant,
};

use proto::{GuestSample, HostSample, IoSample, MetricSample, VolumeIoSample};

use crate::hypervisor::{GuestCounters, IoCounters};

/// How long a sample stays in the reports (ms).
pub const KEEP_MS: i64 = 60_000;

/// The host's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostCounters {
    /// (busy, total) jiffies from /proc/stat.
    pub cpu: Option<(u64, u64)>,
    /// Bytes received and sent on every interface but loopback.
    pub net_in: u64,
    pub net_out: u64,
}

/// The host's state at one moment (not counters).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostState {
    pub memory_used: u64,
    pub memory_total: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

/// Reads the host's counters (what it cannot read stays zero).
pub fn host_counters() -> HostCounters {
    let (net_in, net_out) = std::fs::read_to_string("/proc/net/dev")
        .map(|t| net_dev(&t))
        .unwrap_or((0, 0));
    HostCounters {
        cpu: crate::load::host_cpu(),
        net_in,
        net_out,
    }
}

/// (received, sent) bytes of every interface but `lo` in /proc/net/dev.
pub fn net_dev(text: &str) -> (u64, u64) {
    let mut rx = 0;
    let mut tx = 0;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        rx += v.first().copied().unwrap_or(0);
        tx += v.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

/// The host's memory (/proc/meminfo) and the file system of `dir`.
pub fn host_state(dir: &Path) -> HostState {
    let mut s = HostState::default();
    if let Ok(t) = std::fs::read_to_string("/proc/meminfo") {
        let kib = |key: &str| -> Option<u64> {
            t.lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
                .map(|k| k * 1024)
        };
        let total = kib("MemTotal:").unwrap_or(0);
        s.memory_total = total;
        s.memory_used = total.saturating_sub(kib("MemAvailable:").unwrap_or(total));
    }
    if let Ok(v) = nix::sys::statvfs::statvfs(dir) {
        let frag = v.fragment_size();
        s.disk_total = v.blocks() * frag;
        s.disk_used = v.blocks().saturating_sub(v.blocks_free()) * frag;
    }
    s
}

fn io(c: IoCounters) -> IoSample {
    IoSample {
        read_bytes: c.read_bytes,
        write_bytes: c.write_bytes,
        read_ops: c.read_ops,
        write_ops: c.write_ops,
    }
}

/// The previous counters and the recent samples.
#[derive(Debug, Default)]
pub struct MetricSampler {
    last: Option<(Instant, HashMap<String, GuestCounters>, HostCounters)>,
    recent: VecDeque<MetricSample>,
}

impl MetricSampler {
    /// A sample at `now` (`now_ms` on the wall clock) from the counters:
    /// what passed since the previous one (none for the first; a guest new
    /// since then counts from this sample on).
    pub fn sample(
        &mut self,
        now: Instant,
        now_ms: i64,
        guests: Vec<GuestCounters>,
        host: HostCounters,
        state: HostState,
    ) -> Option<MetricSample> {
        let by_name: HashMap<String, GuestCounters> =
            guests.into_iter().map(|g| (g.name.clone(), g)).collect();
        let previous = self.last.replace((now, by_name, host));
        let (then, before, host_before) = previous?;
        let secs = now.duration_since(then).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let Some((_, guests, _)) = &self.last else {
            return None;
        };
        let mut out = MetricSample {
            at_unix_ms: now_ms,
            secs,
            host: Some(HostSample {
                cpu_percent: match (host_before.cpu, host.cpu) {
                    (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                        b1.saturating_sub(b0) as f64 / (t1 - t0) as f64 * 100.0
                    }
                    _ => 0.0,
                },
                memory_used_bytes: state.memory_used,
                memory_total_bytes: state.memory_total,
                disk_used_bytes: state.disk_used,
                disk_total_bytes: state.disk_total,
                net_in_bytes: host.net_in.saturating_sub(host_before.net_in),
                net_out_bytes: host.net_out.saturating_sub(host_before.net_out),
                guests: guests.len() as u32,
            }),
            guests: Vec::new(),
        };
        let mut names: Vec<&String> = guests.keys().collect();
        names.sort();
        for name in names {
            let g = &guests[name];
            let Some(was) = before.get(name) else {
                continue;
            };
            // A counter that went back: the domain started again here.
            if g.cpu_ns < was.cpu_ns {
                continue;
            }
            let cpu =
                (g.cpu_ns - was.cpu_ns) as f64 / 1e9 / secs / f64::from(g.vcpus.max(1)) * 100.0;
            out.guests.push(GuestSample {
                instance_id: name.clone(),
                cpu_percent: cpu.min(100.0),
                memory_bytes: g.memory_kib * 1024,
                disk: Some(io(g.disk.since(&was.disk))),
                net_in_bytes: g.net_in_bytes.saturating_sub(was.net_in_bytes),
                net_out_bytes: g.net_out_bytes.saturating_sub(was.net_out_bytes),
                net_in_packets: g.net_in_packets.saturating_sub(was.net_in_packets),
                net_out_packets: g.net_out_packets.saturating_sub(was.net_out_packets),
                volumes: g
                    .volumes
                    .iter()
                    .map(|(id, c)| {
                        // A volume attached since the last sample: all its
                        // I/O is of this period.
                        let b = was
                            .volumes
                            .iter()
                            .find(|(v, _)| v == id)
                            .map(|(_, c)| *c)
                            .unwrap_or_default();
                        VolumeIoSample {
                            volume_id: id.clone(),
                            io: Some(io(c.since(&b))),
                        }
                    })
                    .collect(),
            });
        }
        self.recent.push_back(out.clone());
        while self
            .recent
            .front()
            .is_some_and(|s| s.at_unix_ms < now_ms - KEEP_MS)
        {
            self.recent.pop_front();
        }
        Some(out)
    }

    /// The samples of the last minute, oldest first.
    pub fn recent(&self) -> Vec<MetricSample> {
        self.recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guest(name: &str, cpu_secs: f64, net_in: u64, disk_read: u64) -> GuestCounters {
        GuestCounters {
            name: name.into(),
            cpu_ns: (cpu_secs * 1e9) as u64,
            vcpus: 2,
            memory_kib: 1024,
            disk: IoCounters {
                read_bytes: disk_read,
                read_ops: disk_read / 512,
                ..Default::default()
            },
            volumes: vec![(
                "vol-1".into(),
                IoCounters {
                    write_bytes: disk_read,
                    ..Default::default()
                },
            )],
            net_in_bytes: net_in,
            ..Default::default()
        }
    }

    #[test]
    fn samples_are_what_passed_between_two_readings() {
        let mut s = MetricSampler::default();
        let t0 = Instant::now();
        let host = |busy, total, rx| HostCounters {
            cpu: Some((busy, total)),
            net_in: rx,
            net_out: 0,
        };
        assert!(s
            .sample(
                t0,
                0,
                vec![guest("i-1", 1.0, 100, 0)],
                host(0, 100, 5),
                HostState::default()
            )
            .is_none());
        let m = s
            .sample(
                t0 + Duration::from_secs(10),
                10_000,
                vec![guest("i-1", 16.0, 1100, 4096), guest("i-2", 3.0, 0, 0)],
                host(50, 200, 105),
                HostState::default(),
            )
            .expect("a sample");
        // 15 s of CPU in 10 s on 2 vCPUs: 75 %.
        assert_eq!(m.guests.len(), 1, "i-2 counts from the next sample");
        let g = &m.guests[0];
        assert!((g.cpu_percent - 75.0).abs() < 0.01, "{}", g.cpu_percent);
        assert_eq!(g.net_in_bytes, 1000);
        assert_eq!(
            g.disk.as_ref().map(|d| (d.read_bytes, d.read_ops)),
            Some((4096, 8))
        );
        assert_eq!(g.volumes[0].io.as_ref().map(|v| v.write_bytes), Some(4096));
        let h = m.host.as_ref().expect("host");
        assert_eq!((h.cpu_percent, h.net_in_bytes, h.guests), (50.0, 100, 2));
        assert_eq!(s.recent().len(), 1);
        // A volume attached since: all its I/O counts.
        let mut attached = guest("i-1", 17.0, 1100, 4096);
        attached.volumes.push((
            "vol-2".into(),
            IoCounters {
                read_ops: 3,
                ..Default::default()
            },
        ));
        let m = s
            .sample(
                t0 + Duration::from_secs(20),
                20_000,
                vec![attached],
                host(60, 300, 105),
                HostState::default(),
            )
            .expect("a sample");
        assert_eq!(
            m.guests[0].volumes[1].io.as_ref().map(|v| v.read_ops),
            Some(3)
        );
        // A minute on, the first sample has left the reports.
        s.sample(
            t0 + Duration::from_secs(90),
            90_000,
            vec![],
            host(60, 300, 105),
            HostState::default(),
        );
        assert_eq!(
            s.recent().iter().map(|m| m.at_unix_ms).collect::<Vec<_>>(),
            vec![90_000]
        );
    }

    #[test]
    fn net_dev_sums_all_but_loopback() {
        let t = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n  eth0: 2000 5 0 0 0 0 0 0 3000 6 0 0 0 0 0 0\n  br0: 10 1 0 0 0 0 0 0 20 1 0 0 0 0 0 0\n";
        assert_eq!(net_dev(t), (2010, 3020));
    }
}
