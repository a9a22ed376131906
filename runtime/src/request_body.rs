//! Request bodies on their way in: compressed ones decoded, and unread ones read before the
//! answer goes out.
//!
//! - `Content-Encoding` gzip, deflate (zlib) and zstd are decoded as the body streams in (the
//!   [`decoded`]); the body limit counts decoded bytes, so a compression bomb
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
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header::{CONTENT_ENCODING, EXPECT};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::server::AppState;

/// The codings the server decodes, as the 415 answer's `Accept-Encoding` lists them.
pub(crate) const ACCEPTED_ENCODINGS: &str = "gzip, deflate, zstd";

/// Refuses a `Content-Encoding` [`decoded`] does not decode, in the documented JSON,
/// and hands it the accepted ones spelt as it expects (codings are case-insensitive, `x-gzip` is
/// gzip, `identity` is no coding: RFC 9110).
pub(crate) fn check_encoding(headers: &mut axum::http::HeaderMap) -> Result<(), ApiError> {
    let codings: Vec<String> = headers
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
            _ => {
                return Err(ApiError::UnsupportedEncoding(format!(
                    "Content-Encoding {one:?} is not supported; send the body uncompressed or as one of {ACCEPTED_ENCODINGS}"
                )));
            }
        },
        several => {
            return Err(ApiError::UnsupportedEncoding(format!(
                "Content-Encoding {:?} applies {} codings; send at most one, of {ACCEPTED_ENCODINGS}",
                several.join(", "),
                several.len()
            )));
        }
    };
    if headers.contains_key(CONTENT_ENCODING) {
        headers.remove(CONTENT_ENCODING);
    }
    if let Some(coding) = canonical {
        headers.insert(CONTENT_ENCODING, axum::http::HeaderValue::from_static(coding));
    }
    Ok(())
}

/// Runs `request` through the rest of the stack, its body decoded as it streams in when it has a
/// `Content-Encoding` (one of the accepted, as [`check_encoding`] left it). Most requests have
/// none and skip the decoder: as a layer it costs every request a boxed answer body (about 2 µs
/// of a small model's 19 µs per request).
pub(crate) async fn decoded(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    use tower::{Layer as _, ServiceExt as _};
    if !request.headers().contains_key(CONTENT_ENCODING) {
        return next.run(request).await;
    }
    let mut next = Some(next);
    let rest = tower::service_fn(move |request: Request<tower_http::decompression::DecompressionBody<Body>>| {
        let next = next.take();
        async move {
            Ok::<_, std::convert::Infallible>(match next {
                Some(next) => next.run(request.map(Body::new)).await,
                None => axum::response::IntoResponse::into_response(ApiError::Internal(
                    "a decoded request was passed on twice".into(),
                )),
            })
        }
    });
    match tower_http::decompression::RequestDecompressionLayer::new().layer(rest).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// What the handlers leave of a request's body, to be read before their answer goes out (see
/// the module's documentation): [`Rest::keep`] before the handlers, [`Rest::read`] after.
pub(crate) struct Rest {
    started: tokio::time::Instant,
    expects_continue: bool,
    left: oneshot::Receiver<Left>,
}

impl Rest {
    /// `request` with a body that hands itself back when dropped unread.
    pub(crate) fn keep(request: Request) -> (Request, Self) {
        let started = tokio::time::Instant::now();
        let expects_continue =
            request.headers().get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (back, left) = oneshot::channel();
        let request = request.map(|body| Body::new(Returning { body: Some(body), back: Some(back), polled: false }));
        (request, Self { started, expects_continue, left })
    }

    /// Reads and drops what the handlers left, once they have answered.
    pub(crate) async fn read(mut self, state: &AppState) {
        // The handlers dropped the request before answering, so what they left is here already
        // (a body still held elsewhere is someone else's to read).
        if let Ok(Left { body, polled }) = self.left.try_recv()
            && (polled || !self.expects_continue)
        {
            let limit = state.config().max_body_bytes.max(crate::config::DEFAULT_MAX_BODY_BYTES);
            // Within the request's own deadline (a second at least): a body too slow for the
            // deadline does not hold its answer back any longer.
            let deadline = self.started + state.config().request_timeout().unwrap_or(Duration::from_secs(60));
            let within = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1));
            if let Err(why) = discard(body, limit, within).await {
                tracing::debug!(why, "not reading the rest of an unread request body; the connection will close");
            }
        }
    }
}

/// A request body the handlers did not read to its end, handed back when they drop it.
struct Left {
    body: Body,
    /// Whether anything read from it (so a `100 Continue` went out).
    polled: bool,
}

/// A request body that, dropped before its end, sends itself back to
/// [`Rest::read`].
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
