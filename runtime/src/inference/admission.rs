//! Admission: who may send inference work and how much at once, decided before a request body is
//! read, the same for every protocol.
//!
//! API keys come from `Authorization: Bearer <key>` (the scheme compares case-insensitively, as
//! RFC 9110 says) or `x-api-key: <key>`, as HTTP headers or gRPC metadata (both are header maps).
//! The in-flight cap is a semaphore: its permit lives as long as the request, so a response
//! written or a client gone gives the slot back.

use std::sync::Arc;

use axum::http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ApiKey;
use crate::error::ApiError;

/// The admission rules of one server.
#[derive(Debug)]
pub struct Admission {
    /// Each key with its name, shared by every request it admits.
    api_keys: Vec<(String, Option<KeyName>)>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// One admitted request's place among those in flight, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

/// The name of the API key a request was admitted with, carried to the audit log in the
/// response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct KeyName(pub(crate) Arc<str>);

impl Admission {
    /// Rules with these keys (none: no authentication) and at most `max_in_flight` requests at
    /// once (0: no cap).
    pub(crate) fn new(api_keys: Vec<ApiKey>, max_in_flight: usize) -> Self {
        let permits = if max_in_flight == 0 { Semaphore::MAX_PERMITS } else { max_in_flight };
        let api_keys = api_keys.into_iter().map(|k| (k.key, k.name.map(|n| KeyName(n.into())))).collect();
        Self { api_keys, in_flight: Arc::new(Semaphore::new(permits)), max_in_flight }
    }

    /// Admits a request carrying `headers`: a missing or wrong API key is 401, a full in-flight
    /// cap is 503 (with `Retry-After`).
    #[cfg(test)]
    pub(crate) fn admit(&self, headers: &HeaderMap) -> Result<Admitted, ApiError> {
        self.authorize(headers)?;
        self.slot()
    }

    /// The API-key half of admission: a missing or wrong key is 401; the name of the key that
    /// matched, when it has one.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<Option<KeyName>, ApiError> {
        if self.api_keys.is_empty() {
            return Ok(None);
        }
        match authorized(&self.api_keys, headers) {
            Some((_, name)) => Ok(name.clone()),
            None => Err(ApiError::Unauthorized(
                "missing or wrong API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`".into(),
            )),
        }
    }

    /// The in-flight half of [`admit`](Self::admit): a place, or 503 when the cap is full.
    pub(crate) fn slot(&self) -> Result<Admitted, ApiError> {
        let permit = Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| {
            ApiError::Overloaded(format!("more than {} requests in flight; retry shortly", self.max_in_flight))
        })?;
        Ok(Admitted { _permit: permit })
    }
}

/// The key of `Authorization: Bearer <key>`, the scheme in any case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim_start().split_once(char::is_whitespace)?;
    scheme.eq_ignore_ascii_case("bearer").then_some(key)
}

/// The key `headers` carry, when it is one of `keys`. Every key is compared, so the time taken
/// does not say which one matched.
fn authorized<'a>(keys: &'a [(String, Option<KeyName>)], headers: &HeaderMap) -> Option<&'a (String, Option<KeyName>)> {
    let bearer = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let mut found = None;
    for given in [bearer, api_key].into_iter().flatten() {
        for k in keys {
            if constant_time_eq(k.0.as_bytes(), given.trim().as_bytes()) && found.is_none() {
                found = Some(k);
            }
        }
    }
    found
}

/// Compares without an early exit, so the time taken does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn keys_from_either_header_with_the_bearer_scheme_in_any_case() {
        let a = Admission::new(vec![ApiKey::parse("k1")], 0);
        for good in [
            &[("authorization", "Bearer k1")][..],
            &[("authorization", "bearer k1")],
            &[("authorization", "BEARER  k1")],
            &[("authorization", "Bearer\tk1")],
            &[("x-api-key", "k1")],
        ] {
            assert!(a.admit(&headers(good)).is_ok(), "{good:?}");
        }
        for bad in [
            &[][..],
            &[("authorization", "Bearer k2")],
            &[("authorization", "Basic k1")],
            &[("authorization", "Bearerk1")],
            &[("x-api-key", "k")],
        ] {
            assert!(matches!(a.admit(&headers(bad)), Err(ApiError::Unauthorized(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_named_key_gives_its_name_and_never_its_value() {
        let a = Admission::new(vec![ApiKey::parse("ci:s3cret"), ApiKey::parse("plain")], 0);
        let named = a.authorize(&headers(&[("x-api-key", "s3cret")])).expect("named");
        assert_eq!(named.as_ref().map(|k| &*k.0), Some("ci"));
        assert!(a.authorize(&headers(&[("x-api-key", "plain")])).expect("unnamed").is_none());
        // The name alone, or the whole entry, is not the key.
        for bad in ["ci", "ci:s3cret"] {
            assert!(a.admit(&headers(&[("x-api-key", bad)])).is_err(), "{bad}");
        }
        assert_eq!(ApiKey::parse("a b:c"), ApiKey { name: None, key: "a b:c".into() });
        assert_eq!(ApiKey::parse("ci:"), ApiKey { name: None, key: "ci:".into() });
        assert_eq!(ApiKey::parse(":id:secret"), ApiKey { name: None, key: "id:secret".into() });
        assert_eq!(
            ApiKey::parse(" prod-1.eu:k:with:colons "),
            ApiKey { name: Some("prod-1.eu".into()), key: "k:with:colons".into() }
        );
    }

    #[test]
    fn the_cap_counts_admitted_requests_until_they_end() {
        let a = Admission::new(Vec::new(), 2);
        let first = a.admit(&HeaderMap::new()).expect("first");
        let _second = a.admit(&HeaderMap::new()).expect("second");
        let err = a.admit(&HeaderMap::new()).expect_err("third");
        assert!(matches!(&err, ApiError::Overloaded(m) if m.contains("more than 2 requests in flight")), "{err:?}");
        drop(first);
        assert!(a.admit(&HeaderMap::new()).is_ok());
        let uncapped = Admission::new(Vec::new(), 0);
        let held: Vec<_> = (0..10_000).map(|_| uncapped.admit(&HeaderMap::new()).expect("no cap")).collect();
        assert_eq!(held.len(), 10_000);
    }
}
