//! Monitoring benchmark, against a whole cloud started by the test harness
//! (nodes on libvirt's test driver), through CloudWatch's Query protocol
//! with a keep-alive client signing with SigV4 (so the figures are the
//! server's):
//!
//! 1. PutMetricData: datapoints/s ingested, batches of 1,000 datapoints
//!    (the API's limit) from `--clients` connections;
//! 2. one day of 1-minute data for `--instances` instances (1,000 by
//!    default), put as old points: the store's bytes per datapoint on disk;
//! 3. GetMetricData latency over that day: one instance at 1-minute
//!    periods, `SUM(METRICS())` over 500 instances at 5-minute periods,
//!    and GetMetricStatistics of one instance; median and worst of 5.
//!
//! The node's own sampling cost is node-controller's `sampling-bench`.
//! Run both with `scripts/bench-metrics`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use tests::{
    ec2client::Ec2,
    fleet::arg,
    harness::{wait_for, Cloud},
};

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn find_dir(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(root).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(f) = find_dir(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// PutMetricData of `points` (instance, Unix seconds, value) in namespace
/// `Bench/EC2` as CPUUtilization by InstanceId.
fn put(c: &mut Ec2, points: &[(usize, i64, f64)]) {
    let mut owned: Vec<(String, String)> = vec![("Namespace".into(), "Bench/EC2".into())];
    for (i, (inst, at, v)) in points.iter().enumerate() {
        let p = format!("MetricData.member.{}", i + 1);
        owned.push((format!("{p}.MetricName"), "CPUUtilization".into()));
        owned.push((format!("{p}.Unit"), "Percent".into()));
        owned.push((format!("{p}.Dimensions.member.1.Name"), "InstanceId".into()));
        owned.push((
            format!("{p}.Dimensions.member.1.Value"),
            format!("i-{inst:08x}"),
        ));
        owned.push((
            format!("{p}.Timestamp"),
            common::time::iso8601_ms(at * 1000),
        ));
        owned.push((format!("{p}.Value"), format!("{v}")));
    }
    let params: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (status, body) = c.call("PutMetricData", &params);
    assert_eq!(status, 200, "{body}");
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let clients = arg("--clients", 2);
    let instances = arg("--instances", 1000);
    let cloud = Cloud::start();
    wait_for("the cloud", Duration::from_secs(30), || {
        (cloud.service_state("cluster-1").as_deref() == Some("ENABLED")).then_some(())
    });
    let key = cloud.new_account("bench");
    let endpoint = cloud.ec2_endpoint();
    let now = common::time::unix_secs();

    // 1. Ingestion: batches of 1,000 datapoints over 100 series, now.
    let rounds = 40;
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..clients {
            let (endpoint, key) = (endpoint.clone(), key.clone());
            s.spawn(move || {
                let mut c = Ec2::cloudwatch(&endpoint, key);
                for r in 0..rounds {
                    let batch: Vec<(usize, i64, f64)> = (0..1000)
                        .map(|i| {
                            (
                                1_000_000 + t * 1000 + i % 100,
                                now - (r % 60) as i64,
                                i as f64,
                            )
                        })
                        .collect();
                    put(&mut c, &batch);
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let n = (clients * rounds * 1000) as f64;
    println!(
        "PutMetricData: {n:.0} datapoints in batches of 1,000 from {clients} connection(s) in {secs:.2} s: {:.0} datapoints/s",
        n / secs
    );

    // 2. A day of 1-minute data for each instance.
    let metrics_dir = find_dir(cloud.dir(), "metrics").expect("the CLC's metric store");
    let before = dir_bytes(&metrics_dir);
    let day_start = (now - 86_400).div_euclid(60) * 60;
    let started = Instant::now();
    let mut c = Ec2::cloudwatch(&endpoint, key.clone());
    let mut batch = Vec::with_capacity(1000);
    let mut total = 0usize;
    for minute in 0..1440i64 {
        for inst in 0..instances {
            batch.push((
                inst,
                day_start + minute * 60,
                ((inst as i64 + minute) % 100) as f64,
            ));
            if batch.len() == 1000 {
                put(&mut c, &batch);
                total += batch.len();
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        total += batch.len();
        put(&mut c, &batch);
    }
    let secs = started.elapsed().as_secs_f64();
    // Let sled settle its segments before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let after = dir_bytes(&metrics_dir);
    println!(
        "a day of 1-minute data for {instances} instances: {total} datapoints in {secs:.1} s ({:.0}/s); store grew {:.1} MiB: {:.1} bytes per datapoint (kept at 1 minute, 5 minutes and 1 hour)",
        total as f64 / secs,
        after.saturating_sub(before) as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / total as f64
    );

    // 3. Reads over that day.
    let start = common::time::iso8601_ms(day_start * 1000);
    let end = common::time::iso8601_ms((day_start + 86_400) * 1000);
    let time = |c: &mut Ec2, op: &str, params: &[(&str, &str)]| -> (Duration, String) {
        let t = Instant::now();
        let (status, body) = c.call(op, params);
        assert_eq!(status, 200, "{op}: {body}");
        (t.elapsed(), body)
    };
    let stat = |i: usize| {
        vec![
            (
                "MetricDataQueries.member.1.Id".to_string(),
                "m1".to_string(),
            ),
            (
                "MetricDataQueries.member.1.MetricStat.Metric.Namespace".into(),
                "Bench/EC2".into(),
            ),
            (
                "MetricDataQueries.member.1.MetricStat.Metric.MetricName".into(),
                "CPUUtilization".into(),
            ),
            (
                "MetricDataQueries.member.1.MetricStat.Metric.Dimensions.member.1.Name".into(),
                "InstanceId".into(),
            ),
            (
                "MetricDataQueries.member.1.MetricStat.Metric.Dimensions.member.1.Value".into(),
                format!("i-{i:08x}"),
            ),
            (
                "MetricDataQueries.member.1.MetricStat.Period".into(),
                "60".into(),
            ),
            (
                "MetricDataQueries.member.1.MetricStat.Stat".into(),
                "Average".into(),
            ),
        ]
    };
    let mut one = Vec::new();
    for r in 0..5 {
        let mut p = stat(r * 7 % instances);
        p.push(("StartTime".into(), start.clone()));
        p.push(("EndTime".into(), end.clone()));
        let params: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (d, body) = time(&mut c, "GetMetricData", &params);
        assert!(
            body.matches("<member>").count() >= 2 * 1440,
            "1,440 points and their times"
        );
        one.push(d);
    }
    let (m, w) = median(one);
    println!("GetMetricData, one instance's day at 1-minute periods (1,440 points): median {:.1} ms, worst {:.1} ms", m.as_secs_f64() * 1e3, w.as_secs_f64() * 1e3);

    let width = instances.min(499);
    let mut many = Vec::new();
    for _ in 0..5 {
        let mut p: Vec<(String, String)> = Vec::new();
        for i in 0..width {
            let q = format!("MetricDataQueries.member.{}", i + 1);
            p.push((format!("{q}.Id"), format!("m{i}")));
            p.push((format!("{q}.ReturnData"), "false".into()));
            p.push((
                format!("{q}.MetricStat.Metric.Namespace"),
                "Bench/EC2".into(),
            ));
            p.push((
                format!("{q}.MetricStat.Metric.MetricName"),
                "CPUUtilization".into(),
            ));
            p.push((
                format!("{q}.MetricStat.Metric.Dimensions.member.1.Name"),
                "InstanceId".into(),
            ));
            p.push((
                format!("{q}.MetricStat.Metric.Dimensions.member.1.Value"),
                format!("i-{i:08x}"),
            ));
            p.push((format!("{q}.MetricStat.Period"), "300".into()));
            p.push((format!("{q}.MetricStat.Stat"), "Average".into()));
        }
        let q = format!("MetricDataQueries.member.{}", width + 1);
        p.push((format!("{q}.Id"), "total".into()));
        p.push((format!("{q}.Expression"), "SUM(METRICS())".into()));
        p.push(("StartTime".into(), start.clone()));
        p.push(("EndTime".into(), end.clone()));
        let params: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (d, body) = time(&mut c, "GetMetricData", &params);
        assert!(body.contains("<Id>total</Id>"), "{body}");
        many.push(d);
    }
    let (m, w) = median(many);
    println!(
        "GetMetricData, SUM(METRICS()) over {width} instances' day at 5-minute periods ({} minute points read): median {:.1} ms, worst {:.1} ms",
        width * 1440,
        m.as_secs_f64() * 1e3,
        w.as_secs_f64() * 1e3
    );

    let mut gms = Vec::new();
    for r in 0..5 {
        let inst = format!("i-{:08x}", r * 11 % instances);
        let (d, _) = time(
            &mut c,
            "GetMetricStatistics",
            &[
                ("Namespace", "Bench/EC2"),
                ("MetricName", "CPUUtilization"),
                ("Dimensions.member.1.Name", "InstanceId"),
                ("Dimensions.member.1.Value", &inst),
                ("StartTime", &start),
                ("EndTime", &end),
                ("Period", "60"),
                ("Statistics.member.1", "Average"),
                ("Statistics.member.2", "Maximum"),
            ],
        );
        gms.push(d);
    }
    let (m, w) = median(gms);
    println!("GetMetricStatistics, one instance's day at 1-minute periods: median {:.1} ms, worst {:.1} ms", m.as_secs_f64() * 1e3, w.as_secs_f64() * 1e3);
}
