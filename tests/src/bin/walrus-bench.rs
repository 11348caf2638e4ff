//! Walrus benchmark: PUT and GET throughput for 1 MiB and 256 MiB objects,
//! 4 KiB PUT and GET operations per second, and the daemon's peak RSS, on
//! loopback against a whole cloud started by the test harness.
//!
//! Run it with `scripts/bench-walrus` (release build). The client is a
//! minimal HTTP/1.1 client over keep-alive connections that signs with
//! SigV4 and `UNSIGNED-PAYLOAD`, so the figures are the server's, not a
//! Python SDK's. `--large-mib N` adds one N MiB PUT and GET and reports how
//! much the peak RSS grew.

use std::{
    io::{BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{sigv4, time};
use tests::harness::Cloud;

struct Client {
    addr: SocketAddr,
    key: String,
    secret: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(addr: SocketAddr, key: &str, secret: &str) -> Self {
        Self {
            addr,
            key: key.into(),
            secret: secret.into(),
            conn: None,
        }
    }

    fn authorization(&self, method: &str, path: &str, amz_date: &str) -> String {
        let date = &amz_date[..8];
        let canonical = format!(
            "{method}\n{path}\n\nhost:{}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{amz_date}\n\nhost;x-amz-content-sha256;x-amz-date\nUNSIGNED-PAYLOAD",
            self.addr
        );
        let scope = format!("{date}/gumtree/s3/aws4_request");
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sigv4::sha256_hex(canonical.as_bytes())
        );
        let key = sigv4::signing_key(&self.secret, date, "gumtree", "s3");
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={}",
            self.key,
            sigv4::sign(&key, &sts)
        )
    }

    /// Sends a request with a body of `len` bytes taken from `fill`; returns
    /// (status, bytes of response body read and discarded).
    fn request(&mut self, method: &str, path: &str, len: u64, fill: &[u8]) -> (u16, u64) {
        let amz_date = time::amz_date(time::unix_secs());
        let auth = self.authorization(method, path, &amz_date);
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            self.conn = Some(BufReader::with_capacity(1 << 20, s));
        }
        let conn = self.conn.as_mut().expect("connected");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nx-amz-date: {amz_date}\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nAuthorization: {auth}\r\nContent-Length: {len}\r\n\r\n",
            self.addr
        );
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes()).expect("write head");
        let mut left = len;
        while left > 0 {
            let n = left.min(fill.len() as u64) as usize;
            stream.write_all(&fill[..n]).expect("write body");
            left -= n as u64;
        }
        let (status, length) = tests::rawhttp::read_head(conn);
        let mut buf = vec![0u8; 1 << 20];
        let cap = buf.len() as u64;
        let mut left = length;
        while left > 0 {
            let n = conn
                .read(&mut buf[..left.min(cap) as usize])
                .expect("read body");
            assert!(n > 0, "connection closed mid-body");
            left -= n as u64;
        }
        (status, length)
    }
}

fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// PUTs then GETs `count` objects of `size` bytes; prints MiB/s both ways.
fn throughput(c: &mut Client, fill: &[u8], label: &str, size: u64, count: usize) {
    let start = Instant::now();
    for i in 0..count {
        let (s, _) = c.request("PUT", &format!("/bench/{label}-{i}"), size, fill);
        assert_eq!(s, 200, "PUT {label}");
    }
    let put = start.elapsed();
    let start = Instant::now();
    for i in 0..count {
        let (s, n) = c.request("GET", &format!("/bench/{label}-{i}"), 0, fill);
        assert_eq!((s, n), (200, size), "GET {label}");
    }
    let get = start.elapsed();
    let total = size * count as u64;
    println!(
        "{label:>8} x {count:<4} PUT {:8.1} MiB/s   GET {:8.1} MiB/s",
        mib_s(total, put),
        mib_s(total, get)
    );
}

/// `threads` clients doing `per_thread` 4 KiB PUTs, then as many GETs.
fn small_ops(addr: SocketAddr, key: &str, secret: &str, threads: usize, per_thread: usize) {
    let fill = vec![b'x'; 4096];
    for method in ["PUT", "GET"] {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let fill = fill.clone();
                s.spawn(move || {
                    let mut c = Client::new(addr, key, secret);
                    for i in 0..per_thread {
                        let len = if method == "PUT" { 4096 } else { 0 };
                        let (st, _) =
                            c.request(method, &format!("/bench/small-{t}-{i}"), len, &fill);
                        assert_eq!(st, 200, "{method} 4 KiB");
                    }
                });
            }
        });
        let ops = (threads * per_thread) as f64 / start.elapsed().as_secs_f64();
        println!(
            "   4 KiB {method} {ops:9.0} ops/s ({threads} connections, {} requests)",
            threads * per_thread
        );
    }
}

fn main() {
    let mut large_mib: u64 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--large-mib" => {
                large_mib = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--large-mib takes a number")
            }
            other => panic!("unknown argument {other}; usage: walrus-bench [--large-mib N]"),
        }
    }
    let cloud = Cloud::start();
    let (key, secret) = cloud.admin_key();
    let addr: SocketAddr = cloud
        .s3_endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("s3 address");
    let pid = cloud.pid("walrus").as_raw();
    let mut c = Client::new(addr, &key, &secret);
    assert_eq!(c.request("PUT", "/bench", 0, &[]).0, 200, "create bucket");
    let fill: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    println!(
        "walrus benchmark on {addr} (loopback; cores: {})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("peak RSS at start: {} MiB", peak_rss_kib(pid) / 1024);
    throughput(&mut c, &fill, "1MiB", 1 << 20, 200);
    throughput(&mut c, &fill, "256MiB", 256 << 20, 3);
    small_ops(addr, &key, &secret, 8, 250);
    println!(
        "peak RSS after the runs above: {} MiB",
        peak_rss_kib(pid) / 1024
    );
    if large_mib > 0 {
        let before = peak_rss_kib(pid);
        throughput(
            &mut c,
            &fill,
            &format!("{large_mib}MiB"),
            large_mib << 20,
            1,
        );
        let after = peak_rss_kib(pid);
        println!(
            "peak RSS around one {large_mib} MiB PUT and GET: {} -> {} MiB (+{} MiB)",
            before / 1024,
            after / 1024,
            after.saturating_sub(before) / 1024
        );
    }
}
