//! A relay that speaks enough NBD to hide a lost export from QEMU.
//!
//! QEMU keeps one NBD connection to a volume's relay. The relay makes the
//! handshake with the export on QEMU's behalf (passing it through, and
//! keeping what QEMU said), then follows the transmission phase: each
//! request is kept until its whole reply has reached QEMU, and a reply
//! reaches QEMU only whole. When the export goes away (a storage
//! controller restart), the relay dials it again, repeats QEMU's
//! handshake, and sends the requests still unanswered again; QEMU sees
//! its I/O pause, never fail. NBD requests are idempotent (a write of the
//! same bytes at the same place), so sending one twice is harmless.
//! libvirt 9.0 cannot ask QEMU's own NBD client to wait like this.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    sync::Mutex,
};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_ERROR_BIT: u32 = 1 << 31;
const FLAG_NO_ZEROES: u32 = 1 << 1;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const REPLY_FLAG_DONE: u16 = 1;
/// The largest payload a request or reply chunk may carry here.
const MAX_PAYLOAD: u32 = 64 << 20;

type Io<T> = Result<T, String>;

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// What QEMU said in the handshake, to say again to a new export.
#[derive(Debug, Default, Clone)]
struct Handshake {
    /// Client flags and options, as sent.
    bytes: Vec<u8>,
    /// The options, in order.
    options: Vec<u32>,
    client_flags: u32,
}

/// A request not yet answered: its handle, type, length and bytes.
#[derive(Debug, Clone)]
struct Pending {
    handle: u64,
    kind: u16,
    length: u32,
    /// Shared with the write to the export (a write's payload is large).
    bytes: Arc<Vec<u8>>,
}

async fn read_u16<R: AsyncRead + Unpin>(r: &mut R) -> Io<u16> {
    r.read_u16().await.map_err(io)
}

async fn read_u32<R: AsyncRead + Unpin>(r: &mut R) -> Io<u32> {
    r.read_u32().await.map_err(io)
}

async fn read_u64<R: AsyncRead + Unpin>(r: &mut R) -> Io<u64> {
    r.read_u64().await.map_err(io)
}

/// Reads a payload of `len` bytes onto the end of `out`.
async fn read_payload_into<R: AsyncRead + Unpin>(r: &mut R, len: u32, out: &mut Vec<u8>) -> Io<()> {
    if len > MAX_PAYLOAD {
        return Err(format!("an NBD payload of {len} bytes"));
    }
    let at = out.len();
    out.resize(at + len as usize, 0);
    r.read_exact(&mut out[at..]).await.map_err(io)?;
    Ok(())
}

async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> Io<Vec<u8>> {
    if len > MAX_PAYLOAD {
        return Err(format!("an NBD payload of {len} bytes"));
    }
    let mut buf = vec![0; len as usize];
    r.read_exact(&mut buf).await.map_err(io)?;
    Ok(buf)
}

/// Reads the server's replies to one option up to its last (an ACK or an
/// error), each as bytes; answers them and whether it was an ACK.
async fn option_replies<R: AsyncRead + Unpin>(server: &mut R) -> Io<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    loop {
        let magic = read_u64(server).await?;
        if magic != OPT_REPLY_MAGIC {
            return Err(format!("not an option reply: {magic:#x}"));
        }
        let opt = read_u32(server).await?;
        let kind = read_u32(server).await?;
        let len = read_u32(server).await?;
        let data = read_payload(server, len).await?;
        out.extend_from_slice(&magic.to_be_bytes());
        out.extend_from_slice(&opt.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&data);
        if kind == REP_ACK || kind & REP_ERROR_BIT != 0 {
            return Ok((out, kind == REP_ACK));
        }
    }
}

/// The server's answer to NBD_OPT_EXPORT_NAME: size, flags and (unless
/// NO_ZEROES) 124 zero bytes.
async fn export_name_reply<R: AsyncRead + Unpin>(server: &mut R, client_flags: u32) -> Io<Vec<u8>> {
    let len = if client_flags & FLAG_NO_ZEROES != 0 {
        10
    } else {
        134
    };
    read_payload(server, len).await
}

/// Passes the handshake between QEMU and the export, keeping what QEMU
/// said; answers it once the transmission phase begins.
async fn pass_handshake<C, S>(qemu: &mut C, server: &mut S) -> Io<Handshake>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 18];
    server.read_exact(&mut greeting).await.map_err(io)?;
    if greeting[..8] != NBDMAGIC.to_be_bytes() || greeting[8..16] != IHAVEOPT.to_be_bytes() {
        return Err("the export is not a newstyle NBD server".into());
    }
    qemu.write_all(&greeting).await.map_err(io)?;
    let client_flags = read_u32(qemu).await?;
    let mut said = Handshake {
        bytes: client_flags.to_be_bytes().to_vec(),
        options: Vec::new(),
        client_flags,
    };
    server
        .write_all(&said.client_flags.to_be_bytes())
        .await
        .map_err(io)?;
    loop {
        let magic = read_u64(qemu).await?;
        let opt = read_u32(qemu).await?;
        let len = read_u32(qemu).await?;
        let data = read_payload(qemu, len).await?;
        if magic != IHAVEOPT {
            return Err(format!("not an option: {magic:#x}"));
        }
        let mut option = Vec::with_capacity(16 + data.len());
        option.extend_from_slice(&magic.to_be_bytes());
        option.extend_from_slice(&opt.to_be_bytes());
        option.extend_from_slice(&len.to_be_bytes());
        option.extend_from_slice(&data);
        server.write_all(&option).await.map_err(io)?;
        said.bytes.extend_from_slice(&option);
        said.options.push(opt);
        match opt {
            OPT_EXPORT_NAME => {
                let reply = export_name_reply(server, said.client_flags).await?;
                qemu.write_all(&reply).await.map_err(io)?;
                return Ok(said);
            }
            OPT_ABORT => return Err("QEMU ended the handshake".into()),
            _ => {
                let (replies, ack) = option_replies(server).await?;
                qemu.write_all(&replies).await.map_err(io)?;
                if opt == OPT_GO && ack {
                    return Ok(said);
                }
            }
        }
    }
}

/// Says QEMU's handshake again to a new export, discarding its answers.
async fn replay_handshake<S>(server: &mut S, said: &Handshake) -> Io<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut greeting = [0u8; 18];
    server.read_exact(&mut greeting).await.map_err(io)?;
    if greeting[..8] != NBDMAGIC.to_be_bytes() {
        return Err("the export is not an NBD server".into());
    }
    server.write_all(&said.bytes).await.map_err(io)?;
    for (i, opt) in said.options.iter().enumerate() {
        if *opt == OPT_EXPORT_NAME {
            export_name_reply(server, said.client_flags).await?;
            return Ok(());
        }
        let (_, ack) = option_replies(server).await?;
        if *opt == OPT_GO && i + 1 == said.options.len() {
            return if ack {
                Ok(())
            } else {
                Err("the export refused QEMU's options".into())
            };
        }
    }
    Err("QEMU's handshake did not end".into())
}

/// Relays QEMU's NBD connection `qemu` to the export `dial` reaches,
/// dialling again (for up to `patience`) whenever the export goes away.
/// Ends when QEMU disconnects, or when the export stays away.
pub async fn relay<C, S, D, F>(mut qemu: C, dial: D, patience: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Fn() -> F + Send + Sync + 'static,
    F: Future<Output = Io<S>> + Send,
{
    let redial = || async {
        let until = tokio::time::Instant::now() + patience;
        loop {
            match dial().await {
                Ok(s) => return Ok(s),
                Err(e) if tokio::time::Instant::now() >= until => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    };
    let Ok(mut server) = redial().await else {
        return;
    };
    let said = match pass_handshake(&mut qemu, &mut server).await {
        Ok(said) => said,
        Err(e) => {
            tracing::debug!(error = %e, "NBD handshake not relayed");
            return;
        }
    };
    let (from_qemu, mut to_qemu) = tokio::io::split(qemu);
    // Requests' headers come in small reads: buffered.
    let mut from_qemu = tokio::io::BufReader::with_capacity(256 << 10, from_qemu);
    let (mut from_server, to_server) = tokio::io::split(server);
    // The writer to the export (None while it is away) and the requests
    // not yet answered, changed together under the writer's lock.
    let writer: Arc<Mutex<Option<WriteHalf<S>>>> = Arc::new(Mutex::new(Some(to_server)));
    let pending: Arc<std::sync::Mutex<Vec<Pending>>> = Arc::default();
    let requests = {
        let (writer, pending) = (writer.clone(), pending.clone());
        tokio::spawn(async move {
            let _ = forward_requests(&mut from_qemu, &writer, &pending).await;
        })
    };
    loop {
        match forward_replies(&mut from_server, &mut to_qemu, &pending).await {
            Ok(()) => break,
            Err(Lost::Qemu) => break,
            Err(Lost::Export(e)) => {
                let mut w = writer.lock().await;
                *w = None;
                tracing::warn!(error = %e, "volume export lost; dialling it again");
                let again = async {
                    // Dialled and greeted again until the export takes the
                    // handshake (one just restarted may drop a first
                    // connection), for as long as a dial is tried.
                    let until = tokio::time::Instant::now() + patience;
                    let s = loop {
                        let attempt = async {
                            let mut s = dial().await?;
                            replay_handshake(&mut s, &said).await?;
                            Ok::<_, String>(s)
                        }
                        .await;
                        match attempt {
                            Ok(s) => break s,
                            Err(e) if tokio::time::Instant::now() >= until => return Err(e),
                            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                        }
                    };
                    let (r, mut wr) = tokio::io::split(s);
                    let resend: Vec<Arc<Vec<u8>>> = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(|p| p.bytes.clone())
                        .collect();
                    for bytes in &resend {
                        wr.write_all(bytes).await.map_err(io)?;
                    }
                    Ok::<_, String>((r, wr, resend.len()))
                }
                .await;
                match again {
                    Ok((r, wr, resent)) => {
                        tracing::info!(resent, "volume export back");
                        from_server = r;
                        *w = Some(wr);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "volume export not back; QEMU's connection ends");
                        break;
                    }
                }
            }
        }
    }
    requests.abort();
}

/// Why replies stopped.
enum Lost {
    /// QEMU's side closed.
    Qemu,
    /// The export's side failed (why).
    Export(String),
}

/// Reads QEMU's requests, keeps each until answered and sends it to the
/// export (when it is there).
/// An NBD request's header (the compact form, 28 bytes) and what it says.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub head: [u8; 28],
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

impl Request {
    /// Whether it changes the export's data (a write, a trim, a write of
    /// zeros), so that a point-in-time copy must keep what it replaces.
    pub fn changes_data(&self) -> bool {
        matches!(self.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES)
    }
}

/// Reads one request's header from `r`.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Io<Request> {
    // magic u32, flags u16, type u16, handle u64, offset u64, length u32
    let mut head = [0u8; 28];
    r.read_exact(&mut head).await.map_err(io)?;
    let mut at = &head[..];
    let magic = read_u32(&mut at).await?;
    if magic != REQUEST_MAGIC {
        return Err(format!("not an NBD request: {magic:#x}"));
    }
    let _flags = read_u16(&mut at).await?;
    let kind = read_u16(&mut at).await?;
    let handle = read_u64(&mut at).await?;
    let offset = read_u64(&mut at).await?;
    let length = read_u32(&mut at).await?;
    Ok(Request {
        head,
        kind,
        handle,
        offset,
        length,
    })
}

/// Passes an NBD connection from `client` to `server` (the handshake as
/// it comes, then each request), and runs `before_change(offset, length)`
/// before a request that changes data reaches the server. Ends when
/// either side does.
pub async fn watch_changes<C, S, F, Fut>(mut client: C, mut server: S, before_change: F) -> Io<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(u64, u32) -> Fut,
    Fut: Future<Output = ()>,
{
    pass_handshake(&mut client, &mut server).await?;
    let (client_r, mut client_w) = tokio::io::split(client);
    let (server_r, mut server_w) = tokio::io::split(server);
    let mut client_r = tokio::io::BufReader::with_capacity(256 << 10, client_r);
    let mut server_r = tokio::io::BufReader::with_capacity(256 << 10, server_r);
    let requests = async {
        loop {
            let req = read_request(&mut client_r).await?;
            if req.changes_data() {
                before_change(req.offset, req.length).await;
            }
            server_w.write_all(&req.head).await.map_err(io)?;
            if req.kind == CMD_WRITE {
                if req.length > MAX_PAYLOAD {
                    return Err(format!("an NBD payload of {} bytes", req.length));
                }
                let mut payload = (&mut client_r).take(u64::from(req.length));
                tokio::io::copy_buf(&mut payload, &mut server_w)
                    .await
                    .map_err(io)?;
            }
            if req.kind == CMD_DISC {
                return Ok::<(), String>(());
            }
        }
    };
    let replies = async {
        tokio::io::copy_buf(&mut server_r, &mut client_w)
            .await
            .map_err(io)?;
        Ok::<(), String>(())
    };
    tokio::select! {
        r = requests => r,
        r = replies => r,
    }
}

async fn forward_requests<R, S>(
    qemu: &mut R,
    writer: &Mutex<Option<WriteHalf<S>>>,
    pending: &std::sync::Mutex<Vec<Pending>>,
) -> Io<()>
where
    R: AsyncRead + Unpin,
    S: AsyncRead + AsyncWrite,
{
    loop {
        let Request {
            head,
            kind,
            handle,
            length,
            ..
        } = read_request(qemu).await?;
        let mut bytes = head.to_vec();
        if kind == CMD_WRITE {
            read_payload_into(qemu, length, &mut bytes).await?;
        }
        let bytes = Arc::new(bytes);
        let mut w = writer.lock().await;
        if kind != CMD_DISC {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Pending {
                    handle,
                    kind,
                    length,
                    bytes: bytes.clone(),
                });
        }
        if let Some(server) = w.as_mut() {
            if server.write_all(&bytes).await.is_err() {
                // The reply side finds the export gone and resends.
                *w = None;
            }
        }
        if kind == CMD_DISC {
            return Ok(());
        }
    }
}

/// Reads the export's replies and passes each to QEMU once whole (a
/// structured reply once its last chunk came), forgetting its request.
async fn forward_replies<S, C>(
    server: &mut ReadHalf<S>,
    qemu: &mut WriteHalf<C>,
    pending: &std::sync::Mutex<Vec<Pending>>,
) -> Result<(), Lost>
where
    S: AsyncRead + AsyncWrite,
    C: AsyncRead + AsyncWrite,
{
    let lost = Lost::Export;
    let mut chunks: std::collections::HashMap<u64, Vec<u8>> = Default::default();
    loop {
        let magic = read_u32(server).await.map_err(lost)?;
        let (handle, reply, done) = match magic {
            SIMPLE_REPLY_MAGIC => {
                let error = read_u32(server).await.map_err(lost)?;
                let handle = read_u64(server).await.map_err(lost)?;
                let mut reply = Vec::with_capacity(16);
                reply.extend_from_slice(&magic.to_be_bytes());
                reply.extend_from_slice(&error.to_be_bytes());
                reply.extend_from_slice(&handle.to_be_bytes());
                let read_len = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .find(|p| p.handle == handle && p.kind == CMD_READ)
                    .map(|p| p.length);
                if let (0, Some(len)) = (error, read_len) {
                    read_payload_into(server, len, &mut reply)
                        .await
                        .map_err(lost)?;
                }
                (handle, reply, true)
            }
            STRUCTURED_REPLY_MAGIC => {
                let flags = read_u16(server).await.map_err(lost)?;
                let kind = read_u16(server).await.map_err(lost)?;
                let handle = read_u64(server).await.map_err(lost)?;
                let len = read_u32(server).await.map_err(lost)?;
                let chunk = chunks.entry(handle).or_default();
                chunk.extend_from_slice(&magic.to_be_bytes());
                chunk.extend_from_slice(&flags.to_be_bytes());
                chunk.extend_from_slice(&kind.to_be_bytes());
                chunk.extend_from_slice(&handle.to_be_bytes());
                chunk.extend_from_slice(&len.to_be_bytes());
                read_payload_into(server, len, chunk).await.map_err(lost)?;
                if flags & REPLY_FLAG_DONE == 0 {
                    continue;
                }
                let reply = chunks.remove(&handle).unwrap_or_default();
                (handle, reply, true)
            }
            other => return Err(Lost::Export(format!("not an NBD reply: {other:#x}"))),
        };
        if done {
            pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|p| p.handle != handle);
            qemu.write_all(&reply).await.map_err(|_| Lost::Qemu)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::Path, process::Stdio};
    use tokio::{
        io::{AsyncBufReadExt, BufReader},
        net::{UnixListener, UnixStream},
        process::{Child, Command},
    };

    fn have(tool: &str) -> bool {
        std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    async fn serve(file: &Path, socket: &Path) -> Child {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("qemu-nbd")
            .args(["--format=raw", "--persistent", "--socket"])
            .arg(socket)
            .arg(file)
            .kill_on_drop(true)
            .spawn()
            .expect("qemu-nbd");
        for _ in 0..100 {
            if UnixStream::connect(socket).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child
    }

    type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

    /// qemu-io on the NBD export at `socket`: the process, its input and
    /// its output's lines.
    fn qemu_io(socket: &Path) -> (Child, tokio::process::ChildStdin, Lines) {
        let mut client = Command::new("qemu-io")
            .args(["-f", "raw"])
            .arg(format!("nbd+unix:///?socket={}", socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("qemu-io");
        let stdin = client.stdin.take().expect("stdin");
        let out = BufReader::new(client.stdout.take().expect("stdout")).lines();
        (client, stdin, out)
    }

    /// Gives qemu-io `cmd`; answers what it said, up to its figures line
    /// (or a failure).
    async fn run(
        stdin: &mut tokio::process::ChildStdin,
        out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        cmd: &str,
    ) -> String {
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("command");
        let mut said = String::new();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("qemu-io answers")
        {
            said.push_str(&line);
            said.push('\n');
            if line.contains("ops/sec") || line.contains("fail") || line.contains("error") {
                break;
            }
        }
        said
    }

    /// Real qemu-nbd behind the relay and a real QEMU NBD client (qemu-io)
    /// in front: the export is killed and started again between two reads
    /// and a write; the client's one connection sees none of it.
    #[tokio::test]
    async fn qemu_sees_no_failure_while_the_export_restarts() {
        if !have("qemu-nbd") || !have("qemu-io") {
            panic!("qemu-nbd and qemu-io (Debian's qemu-utils) are needed");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("vol.img");
        let mut first = b"GUMTREE-MARK one\n".to_vec();
        first.resize(1 << 20, 0);
        std::fs::write(&file, &first).expect("image");
        let export = dir.path().join("export.sock");
        let front = dir.path().join("relay.sock");
        let mut nbd = serve(&file, &export).await;
        let listener = UnixListener::bind(&front).expect("bind");
        let dialled = export.clone();
        tokio::spawn(async move {
            let (qemu, _) = listener.accept().await.expect("accept");
            let dial = move || {
                let at = dialled.clone();
                async move { UnixStream::connect(&at).await.map_err(|e| e.to_string()) }
            };
            relay(qemu, dial, Duration::from_secs(20)).await;
        });
        let (_client, mut stdin, mut out) = qemu_io(&front);
        let said = run(&mut stdin, &mut out, "read -P 0x47 0 1").await;
        assert!(said.contains("read 1/1 bytes"), "{said}");
        // The export goes away and comes back while a write waits.
        nbd.kill().await.expect("kill");
        let _ = nbd.wait().await;
        let back = {
            let (file, export) = (file.clone(), export.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                serve(&file, &export).await
            })
        };
        let said = run(&mut stdin, &mut out, "write -P 0x5a 4096 4096").await;
        assert!(said.contains("wrote 4096/4096 bytes"), "{said}");
        let _nbd = back.await.expect("restarted");
        let said = run(&mut stdin, &mut out, "read -P 0x5a 4096 4096").await;
        assert!(said.contains("read 4096/4096 bytes"), "{said}");
        let on_disk = std::fs::read(&file).expect("file");
        assert_eq!(&on_disk[4096..8192], &[0x5a; 4096][..]);
        let _ = stdin.write_all(b"quit\n").await;
    }

    #[tokio::test]
    async fn changes_are_seen_before_they_reach_the_export() {
        if !have("qemu-nbd") || !have("qemu-io") {
            panic!("qemu-nbd and qemu-io (Debian's qemu-utils) are needed");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("vol.img");
        std::fs::write(&file, vec![b'a'; 1 << 20]).expect("image");
        let export = dir.path().join("export.sock");
        let front = dir.path().join("front.sock");
        let _nbd = serve(&file, &export).await;
        let listener = UnixListener::bind(&front).expect("bind");
        // Each change as the hook saw it, with the byte the file held at its
        // offset then (the change has not reached it yet).
        let seen: Arc<std::sync::Mutex<Vec<(u64, u32, u8)>>> = Arc::default();
        {
            let (seen, file, export) = (seen.clone(), file.clone(), export.clone());
            tokio::spawn(async move {
                let (client, _) = listener.accept().await.expect("accept");
                let server = UnixStream::connect(&export).await.expect("export");
                let hook = move |offset: u64, len: u32| {
                    let (seen, file) = (seen.clone(), file.clone());
                    async move {
                        let held = std::fs::read(&file).expect("file")[offset as usize];
                        seen.lock().expect("seen").push((offset, len, held));
                    }
                };
                let _ = watch_changes(client, server, hook).await;
            });
        }
        let (_client, mut stdin, mut out) = qemu_io(&front);
        let said = run(&mut stdin, &mut out, "read -P 0x61 0 4096").await;
        assert!(said.contains("read 4096/4096 bytes"), "{said}");
        let said = run(&mut stdin, &mut out, "write -P 0x62 8192 65536").await;
        assert!(said.contains("wrote 65536/65536 bytes"), "{said}");
        let said = run(&mut stdin, &mut out, "write -z 131072 4096").await;
        assert!(said.contains("wrote 4096/4096 bytes"), "{said}");
        let said = run(&mut stdin, &mut out, "read -P 0x62 8192 65536").await;
        assert!(said.contains("read 65536/65536 bytes"), "{said}");
        let _ = stdin.write_all(b"quit\n").await;
        let seen = seen.lock().expect("seen").clone();
        assert_eq!(
            seen,
            vec![(8192, 65536, b'a'), (131072, 4096, b'a')],
            "reads are not changes; writes and zeros are, seen before they land"
        );
        let on_disk = std::fs::read(&file).expect("file");
        assert_eq!(&on_disk[8192..8192 + 65536], &[b'b'; 65536][..]);
        assert_eq!(&on_disk[131072..131072 + 4096], &[0; 4096][..]);
    }
}
