//! The one HTTP client setup of `cargo nimify` (registry pushes, ONNX Runtime downloads): the
//! operating system's trusted certificates (so a corporate or proxy CA installed there works, as
//! with cargo and pip), `HTTPS_PROXY`/`ALL_PROXY` from the environment, and HTTP status codes
//! handed back rather than turned into errors.

use std::time::Duration;

/// An agent trusting the system's roots, or exactly `roots` when some are given (`--ca-cert`).
pub fn agent(roots: &[ureq::tls::Certificate<'static>]) -> ureq::Agent {
    let roots = if roots.is_empty() {
        ureq::tls::RootCerts::PlatformVerifier
    } else {
        ureq::tls::RootCerts::new_with_certs(roots)
    };
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .timeout_connect(Some(Duration::from_secs(10)))
        .user_agent(concat!("cargo-nimify/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}
