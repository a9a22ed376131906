//! Request bodies on their way in: compressed ones decoded, and unread ones read before the
//! answer goes out.
//!
//! - `Content-Encoding` gzip, deflate (zlib) and zstd are decoded as the body streams in (the
//!   router's decompression layer); the body limit counts decoded bytes, so a compression bomb
//!   stops at `max_body_bytes` with a 413 and no more memory than that. Any other coding is a
//!   415 that lists the accepted ones.
//! - An early answer (401, 404, 413, 503) to a request whose body the client is still sending is
//!   sent only after the rest of the body has been read and dropped (up to `max_body_bytes`,
//!   at least 64 MiB, more, within what is left of the request deadline, a second at least; a
//!   larger or slower rest is not waited for, and the connection closes). Closing a socket with unread data makes the kernel
//!   reset the connection, and a client busy sending sees the reset, not the answer. A client
//!   that asked `Expect: 100-continue` and was never told to continue sends no body: nothing to
//!   read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_ENCODING, EXPECT};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::server::AppState;

/// The codings the server decodes, as the 415 answer's `Accept-Encoding` lists them.
pub(crate) const ACCEPTED_ENCODINGS: &str = "gzip, deflate, zstd";

/// Refuses a `Content-Encoding` the decompression layer does not decode, in the documented JSON,
/// and hands it the accepted ones spelt as it expects (codings are case-insensitive, `x-gzip` is
/// gzip, `identity` is no coding: RFC 9110).
pub(crate) async fn check_encoding(mut request: Request, next: Next) -> Response {
    let codings: Vec<String> = request
        .headers()
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let canonical = match codings.as_slice() {
        [] => None,
        [one] => match one.as_str() {
            "gzip" | "x-gzip" => Some("gzip"),
            "deflate" => Some("deflate"),
            "zstd" => Some("zstd"),
            _ => return ApiError::UnsupportedEncoding(format!("Content-Encoding {one:?} is not supported; send the body uncompressed or as one of {ACCEPTED_ENCODINGS}")).into_response(),
        },
        several => {
            return ApiError::UnsupportedEncoding(format!("Content-Encoding {:?} applies {} codings; send at most one, of {ACCEPTED_ENCODINGS}", several.join(", "), several.len())).into_response();
        }
    };
    let headers = request.headers_mut();
    headers.remove(CONTENT_ENCODING);
    if let Some(coding) = canonical {
        headers.insert(CONTENT_ENCODING, axum::http::HeaderValue::from_static(coding));
    }
    next.run(request).await
}

/// Reads what the handlers left of the request body before their answer goes out (see the
/// module's documentation).
pub(crate) async fn read_rest_before_answering(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = tokio::time::Instant::now();
    let expects_continue =
        request.headers().get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (back, mut left) = oneshot::channel();
    let request = request.map(|body| Body::new(Returning { body: Some(body), back: Some(back), polled: false }));
    let response = next.run(request).await;
    // The handlers dropped the request before answering, so what they left is here already
    // (a body still held elsewhere is someone else's to read).
    if let Ok(Left { body, polled }) = left.try_recv()
        && (polled || !expects_continue)
    {
        let limit = state.config().max_body_bytes.max(crate::config::DEFAULT_MAX_BODY_BYTES);
        // Within the request's own deadline (a second at least): a body too slow for the
        // deadline does not hold its answer back any longer.
        let deadline = started + state.config().request_timeout().unwrap_or(Duration::from_secs(60));
        let within = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1));
        if let Err(why) = discard(body, limit, within).await {
            tracing::debug!(why, "not reading the rest of an unread request body; the connection will close");
        }
    }
    response
}

/// A request body the handlers did not read to its end, handed back when they drop it.
struct Left {
    body: Body,
    /// Whether anything read from it (so a `100 Continue` went out).
    polled: bool,
}

/// A request body that, dropped before its end, sends itself back to
/// [`read_rest_before_answering`].
struct Returning {
    body: Option<Body>,
    back: Option<oneshot::Sender<Left>>,
    polled: bool,
}

impl HttpBody for Returning {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.polled = true;
        let Some(body) = self.body.as_mut() else { return Poll::Ready(None) };
        let frame = Pin::new(body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // Read to its end (or broken): nothing to hand back.
            self.body = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.as_ref().map(HttpBody::size_hint).unwrap_or_else(|| hyper::body::SizeHint::with_exact(0))
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take())
            && !body.is_end_stream()
        {
            let _ = back.send(Left { body, polled: self.polled });
        }
    }
}

/// Reads `body` to its end without keeping it: at most `limit` bytes, within `within`.
async fn discard(mut body: Body, limit: usize, within: Duration) -> Result<(), &'static str> {
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|_| "the body broke off")?;
            seen += frame.data_ref().map_or(0, bytes::Bytes::len);
            if seen > limit {
                return Err("the rest of the body is larger than max_body_bytes");
            }
        }
        Ok(())
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err("the rest of the body did not arrive within the request deadline"))
}
