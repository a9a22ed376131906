//! TLS for both listeners (rustls): a certificate chain and key from PEM files, optionally a CA
//! that client certificates must chain to (mutual TLS). ALPN offers HTTP/2 and HTTP/1.1, so gRPC
//! clients (which require `h2`) and HTTP clients both connect. And TLS as a client, to the OTLP
//! collector and the payload-log sink.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

use crate::config::Config;

/// Why TLS could not be set up; the message names the file and what to fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The TLS settings `config` asks for, `None` for plain text.
pub(crate) fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else { return Ok(None) };
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?;
    let builder = match &config.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| TlsError(format!("tls_client_ca {}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError(format!("tls_client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError(format!("tls_key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read: {e}", key.display()))
    })?;
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError(format!("tls_cert {} and tls_key do not make a usable pair: {e}", cert.display())))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

/// A TLS client configuration, for the OTLP collector and the payload-log sink: the server is
/// checked against the certificates of `ca` (a PEM file) when one is named, else against the
/// system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR`, or the distribution's bundle); `identity`
/// (a certificate chain and its key, PEM files) is presented for mutual TLS.
pub(crate) fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<tokio_rustls::rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| TlsError(format!("{}: {e}", ca.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(TlsError(format!(
                    "no trusted root certificates on this system{why}: install the ca-certificates package, set \
                     SSL_CERT_FILE, or name the server's CA"
                )));
            }
        }
    }
    let builder = client_builder(roots)?;
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                TlsError(format!("{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read: {e}", key.display()))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError(format!("{} and its key do not make a usable pair: {e}", cert.display())))
        }
    }
}

/// A connector for hyper's client that speaks TLS (`tls`) to `https://` URLs and plain TCP to
/// `http://` ones.
pub(crate) fn https_connector(
    tls: tokio_rustls::rustls::ClientConfig,
) -> hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector> {
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build()
}

/// A client configuration for a connector that never meets an `https://` URL (no roots).
pub(crate) fn plain_only() -> Result<tokio_rustls::rustls::ClientConfig, TlsError> {
    Ok(client_builder(RootCertStore::empty())?.with_no_client_auth())
}

/// A client configuration trusting `roots`, with ring and the safe protocol versions.
fn client_builder(
    roots: RootCertStore,
) -> Result<
    tokio_rustls::rustls::ConfigBuilder<
        tokio_rustls::rustls::ClientConfig,
        tokio_rustls::rustls::client::WantsClientCert,
    >,
    TlsError,
> {
    Ok(tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots))
}

/// Every certificate in a PEM file; none is an error.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |e: &dyn std::fmt::Display| TlsError(format!("cannot read certificates from {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(&e))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())));
    }
    Ok(certs)
}
