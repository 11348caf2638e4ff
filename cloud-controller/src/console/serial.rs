//! The interactive serial console: a WebSocket between the browser and
//! the instance's first serial port (through its cluster and node).
//! Binary frames carry bytes both ways; a text frame from the console
//! says why it closed.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

use super::{full, ApiError, Body, Console};
use crate::ec2::{Caller, Ec2Error};

/// Largest frame a browser may send (typing, or a paste).
const MAX_FRAME: usize = 64 * 1024;

fn header_is(req: &Request<Incoming>, name: &str, want: &str) -> bool {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
}

/// Opens instance `id`'s serial console for `caller`: the console is
/// opened first (a wrong instance or state is an error before any
/// upgrade), then the WebSocket.
pub async fn open(
    console: &Console,
    caller: Caller,
    id: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (Some(key), true, true) = (
        key,
        header_is(&req, "upgrade", "websocket"),
        header_is(&req, "sec-websocket-version", "13"),
    ) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "The serial console is reached with a WebSocket (version 13).",
        ));
    };
    let (typed_tx, typed_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut output = console
        .ec2
        .cloud
        .open_console(&caller.account_id, id, typed_rx)
        .await
        .map_err(|e| {
            let e = Ec2Error::from(e);
            ApiError::new(e.status, &e.code, e.message)
        })?;
    tracing::info!(instance_id = %id, account = %caller.account_name, user = %caller.user_name, "serial console opened (console)");
    let upgrade = hyper::upgrade::on(&mut req);
    let id = id.to_string();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::info!(error = %e, "serial console upgrade failed");
                return;
            }
        };
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME))
            .max_frame_size(Some(MAX_FRAME));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (mut to_browser, mut from_browser) = ws.split();
        let reason = loop {
            tokio::select! {
                out = output.recv() => match out {
                    Some(bytes) => {
                        if to_browser.send(Message::Binary(Bytes::from(bytes))).await.is_err() {
                            break "the browser went away";
                        }
                    }
                    None => break "the console closed (the instance stopped, or another session took it)",
                },
                msg = from_browser.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        if typed_tx.send(b.to_vec()).await.is_err() {
                            break "the console closed";
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        if typed_tx.send(t.as_bytes().to_vec()).await.is_err() {
                            break "the console closed";
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break "the browser closed it",
                    Some(Ok(_)) => {}
                },
            }
        };
        tracing::info!(instance_id = %id, reason, "serial console closed (console)");
        let _ = to_browser.send(Message::Text(reason.into())).await;
        let _ = to_browser.send(Message::Close(None)).await;
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    Ok(r)
}
