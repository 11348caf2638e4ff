//! A minimal Query client for benchmarks (EC2, or CloudWatch's Query
//! protocol): keep-alive HTTP/1.1, signed with SigV4, so the figures
//! measured are the server's and not a CLI's.

use std::{
    io::{BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
};

use common::{sigv4, time};

pub struct Ec2 {
    addr: SocketAddr,
    key: String,
    secret: String,
    conn: Option<BufReader<TcpStream>>,
    /// Where the API answers, the service it signs for, its version.
    path: &'static str,
    service: &'static str,
    version: &'static str,
}

impl Ec2 {
    pub fn new(endpoint: &str, (key, secret): (String, String)) -> Self {
        let addr = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("endpoint address");
        Self {
            addr,
            key,
            secret,
            conn: None,
            path: "/",
            service: "ec2",
            version: "2016-11-15",
        }
    }

    /// A client of CloudWatch's Query protocol at the EC2 endpoint.
    pub fn cloudwatch(endpoint: &str, key: (String, String)) -> Self {
        Self {
            path: "/services/CloudWatch",
            service: "monitoring",
            version: "2010-08-01",
            ..Self::new(endpoint, key)
        }
    }

    /// One signed POST; (status, body).
    pub fn call(&mut self, action: &str, params: &[(&str, &str)]) -> (u16, String) {
        let mut pairs: Vec<(String, String)> = vec![
            ("Action".into(), action.into()),
            ("Version".into(), self.version.into()),
        ];
        pairs.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let body = sigv4::canonical_query(&pairs);
        let amz_date = time::amz_date(time::unix_secs());
        let date = &amz_date[..8];
        let ctype = "application/x-www-form-urlencoded; charset=utf-8";
        let canonical = format!(
            "POST\n{}\n\ncontent-type:{ctype}\nhost:{}\nx-amz-date:{amz_date}\n\ncontent-type;host;x-amz-date\n{}",
            self.path,
            self.addr,
            sigv4::sha256_hex(body.as_bytes())
        );
        let scope = format!("{date}/gumtree/{}/aws4_request", self.service);
        let sts = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sigv4::sha256_hex(canonical.as_bytes())
        );
        let signing = sigv4::signing_key(&self.secret, date, "gumtree", self.service);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=content-type;host;x-amz-date, Signature={}",
            self.key,
            sigv4::sign(&signing, &sts)
        );
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            self.conn = Some(BufReader::with_capacity(1 << 16, s));
        }
        let conn = self.conn.as_mut().expect("connected");
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nX-Amz-Date: {amz_date}\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n{body}",
            self.path,
            self.addr,
            body.len()
        );
        conn.get_mut().write_all(head.as_bytes()).expect("write");
        let (status, length) = crate::rawhttp::read_head(conn);
        let length = length as usize;
        let mut buf = vec![0u8; length];
        conn.read_exact(&mut buf).expect("body");
        (status, String::from_utf8_lossy(&buf).into_owned())
    }

    pub fn ok(&mut self, action: &str, params: &[(&str, &str)]) -> String {
        let (status, body) = self.call(action, params);
        assert_eq!(status, 200, "{action}: {body}");
        body
    }
}

/// Text of the first `<name>` element in `xml`.
pub fn first<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}
