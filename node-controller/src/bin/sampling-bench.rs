//! What sampling costs a node: 100 guests (`--guests N`) with a disk, a
//! NIC and a volume each on libvirt's test driver, read (CPU time, block
//! and interface counters, memory) and turned into a metric sample as the
//! node controller does every `sample_secs`; the wall and CPU time of a
//! round, and the share of one core that is at a sample every 10 s.
//! `scripts/bench-metrics` runs it.

use std::time::Instant;

use node_controller::{
    hypervisor::{DomainSpec, Hypervisor, Libvirt, VolumeDisk},
    metrics::{host_counters, host_state, MetricSampler},
    virt::Virt,
};

/// This process's CPU time so far, all its threads (schedstat, in ns).
fn cpu_secs() -> f64 {
    let mut ns: u64 = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let guests: usize = args
        .iter()
        .position(|a| a == "--guests")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let hv = Libvirt::connect("test:///default")?;
    for i in 0..guests {
        hv.launch(&DomainSpec {
            name: format!("i-{i:08x}"),
            virt: Virt::Qemu,
            emulator: None,
            vcpus: 1,
            memory_mib: 256,
            kernel: Some("/cache/k".into()),
            ramdisk: Some("/cache/r".into()),
            cmdline: "console=ttyS0".into(),
            disk: Some(format!("/inst/i-{i}/disk.qcow2").into()),
            console_log: format!("/inst/i-{i}/console.log").into(),
            nic: Some((
                "br0".into(),
                format!("d0:0d:00:00:{:02x}:{:02x}", i / 256, i % 256),
                format!("tap{i}"),
            )),
            volumes: vec![VolumeDisk {
                volume_id: format!("vol-{i:08x}"),
                target: "vdb".into(),
                socket: format!("/run/v{i}.sock").into(),
            }],
        })?;
    }
    let mut sampler = MetricSampler::default();
    let dir = std::env::temp_dir();
    let rounds = 200;
    let mut walls = Vec::new();
    let cpu0 = cpu_secs();
    let mut seen = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let stats = hv.guest_stats("i-")?;
        seen = stats.len();
        let _ = sampler.sample(
            Instant::now(),
            common::time::unix_ms(),
            stats,
            host_counters(),
            host_state(&dir),
        );
        walls.push(t.elapsed().as_secs_f64());
    }
    let cpu = (cpu_secs() - cpu0) / rounds as f64;
    walls.sort_by(f64::total_cmp);
    let wall = walls[walls.len() / 2];
    println!(
        "sampling {seen} guests (test driver: CPU, a disk, a NIC, a volume each): {:.1} ms a round (median of {rounds}), {:.1} ms of CPU: {:.2}% of one core at a sample every 10 s",
        wall * 1e3,
        cpu * 1e3,
        cpu / 10.0 * 100.0
    );
    Ok(())
}
