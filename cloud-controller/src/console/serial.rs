//! The interactive serial console over a WebSocket.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{ApiError, Body, Console};
use crate::ec2::Caller;

/// Opens instance `id`'s serial console for `caller`.
pub async fn open(
    _console: &Console,
    _caller: Caller,
    _id: &str,
    _req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "not yet"))
}
