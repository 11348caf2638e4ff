//! A web server asked from inside a network namespace (another host, the
//! outside world): once, or again and again while something happens to it,
//! to say how long it went without answering.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Runs `f` on a thread of its own inside network namespace `netns`.
fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// The body of `GET /` at `addr`, or None (no answer within `timeout`, or
/// not a 200).
fn get(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip()).as_bytes())
        .ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|()| head.split_whitespace().nth(1) == Some("200"))?;
    Some(body.to_string())
}

/// `GET http://addr/` from namespace `netns`: the body, or None.
pub fn http_get(netns: &str, addr: SocketAddr, timeout: Duration) -> Option<String> {
    in_netns(netns, move || get(addr, timeout))
        .join()
        .expect("the probe thread")
}

/// One try: when it started, and whether the answer had what was wanted.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub ok: bool,
}

/// Asks `GET /` again and again from a namespace until stopped.
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Prober {
    /// Asks `addr` from `netns` every `every` (or as soon as the try
    /// before ends, when it took longer), each try waiting at most
    /// `patience` for its answer; a try is good when the body has
    /// `expect`.
    pub fn start(
        netns: &str,
        addr: SocketAddr,
        expect: &str,
        every: Duration,
        patience: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, expect) = (stop.clone(), expect.to_string());
        let thread = in_netns(netns, move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                let at = Instant::now();
                let ok = get(addr, patience).is_some_and(|b| b.contains(&expect));
                samples.push(Sample { at, ok });
                if let Some(rest) = every.checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            samples
        });
        Self { stop, thread }
    }

    /// Stops asking: every try made.
    pub fn stop(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        Samples(self.thread.join().expect("the probe thread"))
    }
}

/// The tries of a [`Prober`].
#[derive(Debug)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The longest time between the starts of two good tries that
    /// overlaps `from` to `to` (what a client saw of an outage then); None
    /// when no good try started after `to`.
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Option<Duration> {
        let good: Vec<Instant> = self.0.iter().filter(|s| s.ok).map(|s| s.at).collect();
        if !good.iter().any(|t| *t >= to) {
            return None;
        }
        good.windows(2)
            .filter(|w| w[1] >= from && w[0] <= to)
            .map(|w| w[1] - w[0])
            .max()
            .or(Some(Duration::ZERO))
    }

    /// How many tries there were, and how many failed.
    pub fn counts(&self) -> (usize, usize) {
        (self.0.len(), self.0.iter().filter(|s| !s.ok).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_the_longest_silence_around_the_event() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = |ms, ok| Sample { at: at(ms), ok };
        let samples = Samples(vec![
            s(0, true),
            s(100, true),
            s(200, false),
            s(300, false),
            s(400, true),
            s(500, true),
            s(5000, false),
        ]);
        assert_eq!(
            samples.longest_gap(at(150), at(450)),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            samples.longest_gap(at(150), at(4000)),
            None,
            "no answer after"
        );
        assert_eq!(samples.counts(), (7, 3));
    }
}
