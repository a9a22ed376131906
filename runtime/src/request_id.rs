//! Request ids: a request's `x-request-id` is kept, or else one is made, and the answer carries
//! it.
//!
//! Made ids are random version-4 UUIDs, drawn from a per-thread SplitMix64 generator seeded
//! once per thread from the operating system's random source: unique across threads, processes
//! and machines (two sequences would have to start within a few billion draws of each other in
//! a space of 2^64), cheap (no system call per request, as a fresh OS-random UUID per request
//! would be), but not secret: an id names a request in logs and traces, it authorizes nothing.

use std::cell::Cell;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// The header carrying the id.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the one it came with, or a new one set on it.
pub(crate) fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(HEADER) {
        return given.clone();
    }
    let id = new_id();
    headers.insert(HEADER, id.clone());
    id
}

thread_local! {
    static STATE: Cell<u64> = Cell::new({
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        a ^ b.rotate_left(32)
    });
}

/// One SplitMix64 step.
fn next(state: &Cell<u64>) -> u64 {
    let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
    state.set(s);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn new_id() -> HeaderValue {
    let (a, b) = STATE.with(|s| (next(s), next(s)));
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&a.to_le_bytes());
    bytes[8..].copy_from_slice(&b.to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text);
    // Bytes that own their array: the id is cloned into the request, the answer and the log,
    // and each clone is a reference count (a header value made from text would allocate once
    // more, on its first clone, to share its copy).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text)).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_id_is_kept_and_a_made_one_is_a_fresh_v4_uuid() {
        let mut given = HeaderMap::new();
        given.insert(HEADER, HeaderValue::from_static("ort-failure-7"));
        assert_eq!(ensure(&mut given), "ort-failure-7");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let mut headers = HeaderMap::new();
            let id = ensure(&mut headers);
            assert_eq!(headers.get(HEADER), Some(&id), "set on the request");
            let uuid = uuid::Uuid::parse_str(id.to_str().expect("ASCII")).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert!(seen.insert(uuid), "{uuid} made twice");
        }
    }

    #[test]
    fn threads_draw_different_ids() {
        let ids: Vec<String> = (0..4)
            .map(|_| std::thread::spawn(|| new_id().to_str().expect("ASCII").to_string()))
            .map(|t| t.join().expect("thread"))
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    }
}
