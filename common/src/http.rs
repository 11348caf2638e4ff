//! The HTTP/1.1 accept loop the client-facing endpoints share (Walrus's S3,
//! the CLC's EC2 Query API): plain or TLS, one task per connection.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use hyper::{
    body::{Body, Incoming},
    server::conn::http1,
    service::service_fn,
    Request, Response,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The client's address, in each request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header section a handler accepts ([`headers_too_large`]).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most header fields a handler accepts.
pub const MAX_HEADERS: usize = 200;

/// Whether a request's header section is over [`MAX_HEADER_BYTES`] or
/// [`MAX_HEADERS`]: the handler answers it with its own XML error (431).
/// hyper reads up to four times that before it answers a bare 431 itself.
pub fn headers_too_large<B>(req: &Request<B>) -> bool {
    let bytes: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    bytes > MAX_HEADER_BYTES || req.headers().len() > MAX_HEADERS
}

/// A request's headers as (lower-case name, value) pairs, as the signature
/// checks read them (a value that is not UTF-8 read lossily).
pub fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Serves `handler` on `listener` (over TLS with `tls`) until the task is
/// dropped.
pub async fn serve<H, F, B>(listener: TcpListener, tls: Option<TlsAcceptor>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let mut builder = http1::Builder::new();
            // Room for header sections a little over our limits, so the
            // handler can refuse them with a proper error body.
            builder.max_buf_size(4 * MAX_HEADER_BYTES + 64 * 1024);
            builder.max_headers(4 * MAX_HEADERS);
            // A client may shut its write side once its request is sent
            // (busybox nc does): still answer it.
            builder.half_close(true);
            let served = match tls {
                None => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            builder
                                .serve_connection(TokioIo::new(tls_stream), service)
                                .with_upgrades()
                                .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
