//! Pushing an image over the OCI distribution API: blobs the registry lacks are uploaded
//! (monolithic `POST` + `PUT`, streamed from disk, so a multi-GB model never sits in memory),
//! then the manifest is put under its tag, last, so a failed push never leaves a tag pointing at
//! missing blobs. Basic auth and bearer tokens; TLS with extra CA certificates; plain HTTP with
//! `--insecure`. (oci-client was considered: its blob push takes the whole blob in memory.)

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

use super::Assembled;
use super::oci::media;
use crate::{CliError, IoContext};

/// `REGISTRY/NAME:TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// Host and port.
    pub registry: String,
    /// Repository path.
    pub name: String,
    /// Tag.
    pub tag: String,
}

impl RegistryRef {
    /// Parses `REGISTRY/NAME[:TAG]`; the registry host must be explicit.
    pub fn parse(s: &str, default_tag: &str) -> Result<Self, CliError> {
        let (registry, rest) = s.split_once('/').unwrap_or((s, ""));
        let looks_like_host = registry.contains('.') || registry.contains(':') || registry == "localhost";
        if !looks_like_host || rest.is_empty() {
            return Err(CliError::msg(format!(
                "docker://{s}: name the registry host and the image, e.g. docker://127.0.0.1:5000/{}",
                if rest.is_empty() { registry } else { rest }
            )));
        }
        if rest.contains('@') {
            return Err(CliError::msg(format!("docker://{s}: push to a tag, not a digest")));
        }
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, tag),
            _ => (rest, default_tag),
        };
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if name.is_empty() || !name.chars().all(valid) {
            return Err(CliError::msg(format!(
                "docker://{s}: image name {name:?} may hold only lower-case letters, digits and . _ - /"
            )));
        }
        Ok(Self { registry: registry.to_string(), name: name.to_string(), tag: tag.to_string() })
    }

    /// `REGISTRY/NAME:TAG`.
    pub fn display(&self) -> String {
        format!("{}/{}:{}", self.registry, self.name, self.tag)
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust, e.g. a self-signed registry's.
    pub ca_certs: Vec<PathBuf>,
    /// `(user, password)`; else the registry auth files are consulted.
    pub creds: Option<(String, String)>,
}

/// Pushes `image` and returns the manifest digest the registry reports.
pub fn push(
    image: &Assembled,
    target: &RegistryRef,
    options: &PushOptions,
    status: &dyn Fn(&str, &str),
) -> Result<String, CliError> {
    let client = Client::connect(target, options)?;
    for layer in image.layers.iter().map(|l| &l.blob).chain([&image.config]) {
        let url = client.url(&format!("blobs/{}", layer.digest));
        let head = client.send(|a, auth| with_auth(a.head(&url), auth).call())?;
        if head.status() == 200 {
            status("Exists", &format!("{} ({})", short(&layer.digest), super::human_size(layer.size)));
            continue;
        }
        status("Pushing", &format!("{} ({})", short(&layer.digest), super::human_size(layer.size)));
        let start = client.url("blobs/uploads/");
        let mut begun = client.send(|a, auth| with_auth(a.post(&start), auth).send_empty())?;
        if begun.status() != 202 {
            return Err(client.refused("start a blob upload", &mut begun));
        }
        let location = begun.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let location = if location.starts_with("http") { location } else { format!("{}{location}", client.base) };
        let put = format!("{location}{}digest={}", if location.contains('?') { '&' } else { '?' }, layer.digest);
        let bar = crate::term::bytes_bar("Uploading", layer.size);
        let done = client.send(|a, auth| {
            let file = std::fs::File::open(&layer.path).map_err(ureq::Error::from)?;
            bar.set_position(0);
            let body = ureq::SendBody::from_owned_reader(bar.wrap_read(file));
            with_auth(a.put(&put), auth)
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", layer.size.to_string())
                .send(body)
        });
        bar.finish_and_clear();
        let mut done = done?;
        if done.status() != 201 {
            return Err(client.refused(&format!("store blob {}", layer.digest), &mut done));
        }
    }
    let manifest = std::fs::read(&image.manifest.path).at("read the manifest", &image.manifest.path)?;
    let url = client.url(&format!("manifests/{}", target.tag));
    let mut put = client.send(|a, auth| {
        with_auth(a.put(&url), auth).header("Content-Type", media::MANIFEST).send(manifest.as_slice())
    })?;
    if put.status() != 201 {
        return Err(client.refused(&format!("store the manifest as {}", target.display()), &mut put));
    }
    let reported = put.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(String::from);
    if let Some(d) = reported.as_ref().filter(|d| **d != image.manifest.digest) {
        return Err(CliError::msg(format!(
            "registry {} stored the manifest as {d}, but its digest is {}; the registry rewrote it",
            target.registry, image.manifest.digest
        )));
    }
    Ok(image.manifest.digest.clone())
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn with_auth<B>(request: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => request.header("Authorization", a),
        None => request,
    }
}

type Response = ureq::http::Response<ureq::Body>;

struct Client {
    agent: ureq::Agent,
    base: String,
    name: String,
    registry: String,
    auth: Option<String>,
    hint: &'static str,
}

impl Client {
    /// Checks the registry answers (`GET /v2/`) and settles authentication before any upload.
    fn connect(target: &RegistryRef, options: &PushOptions) -> Result<Self, CliError> {
        let agent = crate::http::agent(&load_certs(&options.ca_certs)?);
        let scheme = if options.insecure { "http" } else { "https" };
        let hint = if options.insecure {
            ""
        } else {
            "; for a self-signed certificate pass --ca-cert FILE, for a plain-HTTP registry pass --insecure"
        };
        let mut client = Self {
            agent,
            base: format!("{scheme}://{}", target.registry),
            name: target.name.clone(),
            registry: target.registry.clone(),
            auth: None,
            hint,
        };
        let ping = format!("{}/v2/", client.base);
        let first = client.send(|a, _| a.get(&ping).call())?;
        if first.status() == 200 {
            return Ok(client);
        }
        if first.status() != 401 {
            return Err(CliError::msg(format!(
                "{ping} answered {}; is {} an OCI registry?",
                first.status(),
                target.registry
            )));
        }
        let challenge =
            first.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let creds = options.creds.clone().or_else(|| stored_creds(&target.registry));
        client.auth = Some(client.authenticate(&challenge, creds.as_ref())?);
        let mut again = client.send(|a, auth| with_auth(a.get(&ping), auth).call())?;
        match again.status().as_u16() {
            200 => Ok(client),
            401 | 403 => Err(wrong_creds(&target.registry, creds.as_ref())),
            _ => Err(client.refused("accept the credentials", &mut again)),
        }
    }

    fn authenticate(&self, challenge: &str, creds: Option<&(String, String)>) -> Result<String, CliError> {
        let basic = creds
            .map(|(u, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))));
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                CliError::with_help(
                    format!("registry {} requires credentials", self.registry),
                    format!(
                        "pass --creds USER:PASSWORD (or set NIMIFY_REGISTRY_CREDS), or log in with `podman login {}`",
                        self.registry
                    ),
                )
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(CliError::msg(format!(
                "registry {} asks for authentication scheme {scheme:?}, which nimify does not speak (Basic and Bearer only)",
                self.registry
            )));
        }
        let param = |key: &str| {
            params
                .split(',')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim_matches('"').to_string())
        };
        let realm = param("realm").ok_or_else(|| {
            CliError::msg(format!("registry {} sent a bearer challenge without a realm", self.registry))
        })?;
        let mut url = format!("{realm}?scope=repository:{}:pull,push", self.name);
        if let Some(service) = param("service") {
            url.push_str(&format!("&service={service}"));
        }
        let mut resp = self.send(|a, _| with_auth(a.get(&url), basic.as_deref()).call())?;
        if resp.status() == 401 || resp.status() == 403 {
            return Err(wrong_creds(&self.registry, creds));
        }
        let body: Value =
            resp.body_mut().read_to_string().ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
        let token = body["token"].as_str().or(body["access_token"].as_str()).ok_or_else(|| {
            CliError::msg(format!("token service {realm} answered {} without a token", resp.status()))
        })?;
        Ok(format!("Bearer {token}"))
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.name)
    }

    /// Sends one request; a transport failure becomes an error naming the registry.
    fn send(
        &self,
        request: impl FnOnce(&ureq::Agent, Option<&str>) -> Result<Response, ureq::Error>,
    ) -> Result<Response, CliError> {
        request(&self.agent, self.auth.as_deref()).map_err(|e| {
            let e = e.to_string();
            let hint = if e.contains("CaUsedAsEndEntity") {
                "; the registry's certificate is marked as a CA (openssl req -x509's default): issue it with `-addext basicConstraints=critical,CA:FALSE`, or sign it with a separate CA and pass that with --ca-cert"
            } else {
                self.hint
            };
            CliError::msg(format!("cannot reach registry {} ({}): {e}{hint}", self.registry, self.base))
        })
    }

    fn refused(&self, what: &str, resp: &mut Response) -> CliError {
        let status = resp.status();
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(300).collect();
        CliError::msg(format!("registry {} did not {what}: {status} {body}", self.registry))
    }
}

fn wrong_creds(registry: &str, creds: Option<&(String, String)>) -> CliError {
    match creds {
        Some((user, _)) => CliError::msg(format!(
            "registry {registry} rejected the credentials of user {user:?}; check --creds (or NIMIFY_REGISTRY_CREDS, or `podman login {registry}`)"
        )),
        None => CliError::msg(format!(
            "registry {registry} requires credentials; pass --creds USER:PASSWORD (or set NIMIFY_REGISTRY_CREDS), or log in with `podman login {registry}`"
        )),
    }
}

fn load_certs(paths: &[PathBuf]) -> Result<Vec<ureq::tls::Certificate<'static>>, CliError> {
    let mut certs = Vec::new();
    for path in paths {
        let pem = std::fs::read(path)
            .map_err(|e| CliError::msg(format!("cannot read CA certificate {}: {e}", path.display())))?;
        let before = certs.len();
        for item in ureq::tls::parse_pem(&pem) {
            if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                certs.push(c);
            }
        }
        if certs.len() == before {
            return Err(CliError::msg(format!("{} holds no PEM certificate", path.display())));
        }
    }
    Ok(certs)
}

/// Credentials `podman login` / `docker login` stored for `registry`: `$REGISTRY_AUTH_FILE`,
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`, `~/.docker/config.json`.
fn stored_creds(registry: &str) -> Option<(String, String)> {
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from));
    files.extend(std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")));
    if let Some(home) = dirs::home_dir() {
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files.iter().find_map(|f| {
        let doc: Value = serde_json::from_slice(&std::fs::read(f).ok()?).ok()?;
        let encoded = doc["auths"][registry]["auth"].as_str()?;
        let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?;
        let (user, pass) = decoded.split_once(':')?;
        Some((user.to_string(), pass.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_need_a_registry_host() {
        let r = RegistryRef::parse("127.0.0.1:5000/acme/iris:v1", "0.1.0").expect("full");
        assert_eq!((r.registry.as_str(), r.name.as_str(), r.tag.as_str()), ("127.0.0.1:5000", "acme/iris", "v1"));
        assert_eq!(RegistryRef::parse("localhost/iris", "0.1.0").expect("default tag").tag, "0.1.0");
        assert!(
            RegistryRef::parse("iris:v1", "0.1.0")
                .expect_err("no host")
                .to_string()
                .contains("docker://127.0.0.1:5000/")
        );
        assert!(
            RegistryRef::parse("ghcr.io/Acme/Iris", "1").expect_err("upper case").to_string().contains("lower-case")
        );
        assert!(RegistryRef::parse("ghcr.io/iris@sha256:00", "1").is_err());
    }
}
