//! What a failed attempt was: a connection failure (safe to send elsewhere), a spent
//! deadline, or a reply's gRPC status — found by the errors' types, never their text.

use tonic::body::Body;

/// The gRPC status of a trailers-only reply (the status in the headers).
pub(super) fn grpc_status(response: &http::Response<Body>) -> Option<tonic::Code> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A failure to reach the endpoint or keep the connection (refused, reset, closed, a
/// stream refused while draining) — not a spent deadline.
pub(super) fn is_connection_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return false;
        }
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(status) = err.downcast_ref::<tonic::Status>() {
            return status.code() == tonic::Code::Unavailable;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected
            );
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && (hyper.is_canceled() || hyper.is_closed() || hyper.is_incomplete_message())
        {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // REFUSED_STREAM: the server did not process the stream (draining).
            return h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

/// A spent deadline (tonic's own timeout), anywhere in the chain.
pub(super) fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}
