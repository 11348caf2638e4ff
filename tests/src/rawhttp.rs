//! The benchmarks' minimal HTTP/1.1 client side: reading a response head.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
};

/// Reads a response's status line and headers: (status, Content-Length).
pub fn read_head(conn: &mut BufReader<TcpStream>) -> (u16, u64) {
    let mut line = String::new();
    conn.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut length = 0u64;
    loop {
        line.clear();
        conn.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    (status, length)
}
