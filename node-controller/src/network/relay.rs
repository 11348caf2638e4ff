//! The metadata service on the guests' side: 169.254.169.254 DNATed to a
//! listener on the gateway, which relays each request, with the guest's
//! address, to the CLC over gRPC.

use std::net::SocketAddr;

use bytes::Bytes;
use common::{pki::Role, rpc::Trust};
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response};
use proto::{metadata_service_client::MetadataServiceClient, MetadataRequest};

use super::{LinuxNetwork, NetError, NetSpec};

/// Where the metadata relay sends requests.
#[derive(Debug, Clone)]
pub struct Relay {
    /// The CLC's gRPC address.
    pub clc: String,
    /// How this node proves itself (the CLC answers for its guests only).
    pub trust: Trust,
}

impl LinuxNetwork {
    pub(super) async fn ensure_metadata(&self, net: &NetSpec) -> Result<(), NetError> {
        let rule = self.nat_rule(net);
        if self.iptables("-C", &rule).await.is_err() {
            self.iptables("-A", &rule).await?;
        }
        let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
        if proxies.get(&net.bridge).is_some_and(|h| !h.is_finished()) {
            return Ok(());
        }
        let addr = SocketAddr::from((net.gateway, self.metadata_port));
        let listener = match bind_in(self.netns.as_deref(), addr) {
            Ok(l) => l,
            // Another node controller on this host relays for this bridge.
            Err(NetError::Io(e)) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::info!(bridge = %net.bridge, listen = %addr, "metadata relay already served on this host");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let relay = self.relay.clone();
        let handle = tokio::spawn(async move {
            common::http::serve(listener, None, move |req| {
                let relay = relay.clone();
                async move { relay_request(&relay, req).await }
            })
            .await
        });
        proxies.insert(net.bridge.clone(), handle);
        tracing::info!(bridge = %net.bridge, listen = %addr, "metadata relay listening");
        Ok(())
    }
}

/// A listener on `addr` in network namespace `netns` (a named one under
/// /run/netns), or in this process's.
pub(super) fn bind_in(
    netns: Option<&str>,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, NetError> {
    let std_listener = match netns {
        None => std::net::TcpListener::bind(addr)?,
        Some(ns) => {
            let path = format!("/run/netns/{ns}");
            // A socket keeps the namespace it was made in: make it on a
            // thread that entered the namespace, then hand it back.
            std::thread::scope(|s| {
                s.spawn(|| -> std::io::Result<std::net::TcpListener> {
                    let file = std::fs::File::open(&path)?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    std::net::TcpListener::bind(addr)
                })
                .join()
                .map_err(|_| std::io::Error::other("namespace thread panicked"))?
            })?
        }
    };
    std_listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(std_listener)?)
}

pub(super) fn plain(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    r
}

/// Passes one guest request to the CLC and its answer back.
pub(super) async fn relay_request(relay: &Relay, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(peer) = req.extensions().get::<common::http::PeerAddr>().copied() else {
        return plain(500, "no peer address");
    };
    let headers = req
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = MetadataRequest {
        source_ip: peer.0.ip().to_string(),
        method: req.method().as_str().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers,
    };
    let channel = match relay.trust.channel(&relay.clc, Role::Clc) {
        Ok(c) => c,
        Err(e) => return plain(502, &format!("metadata service unreachable: {e}")),
    };
    let mut client = MetadataServiceClient::new(channel);
    match client.get(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let mut r = Response::new(Full::new(Bytes::from(reply.body)));
            *r.status_mut() = http::StatusCode::from_u16(reply.status as u16)
                .unwrap_or(http::StatusCode::BAD_GATEWAY);
            if let Ok(v) = http::HeaderValue::from_str(&reply.content_type) {
                r.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e.message(), "metadata relay failed");
            plain(502, "metadata service unavailable")
        }
    }
}
