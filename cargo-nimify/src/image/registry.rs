//! Pushing an image over the OCI distribution API: blobs the registry lacks are uploaded
//! (monolithic `POST` + `PUT`, streamed from disk, so a multi-GB model never sits in memory),
//! then the manifest is put under its tag, last, so a failed push never leaves a tag pointing at
//! missing blobs. Basic auth and bearer tokens; TLS with extra CA certificates; plain HTTP with
//! `--insecure`. (oci-client was considered: its blob push takes the whole blob in memory.)

use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

use super::Image;
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

/// Pushes `image` and returns the digest of what the tag names: the manifest, or the index of a
/// multi-platform image (each platform's manifest is stored by its digest first).
pub fn push(
    image: &Image,
    target: &RegistryRef,
    options: &PushOptions,
    status: &dyn Fn(&str, &str),
) -> Result<String, CliError> {
    let client = Client::connect(target, options, "pull,push")?;
    let chunk = chunk_size();
    let mut pushed = std::collections::BTreeSet::new();
    let layers = image.platforms.iter().flat_map(|a| a.layers.iter().map(|l| &l.blob).chain([&a.config]));
    for layer in layers.filter(|b| pushed.insert(b.digest.clone())) {
        let url = client.url(&format!("blobs/{}", layer.digest));
        let head = client.send(|a, auth| with_auth(a.head(&url), auth).call())?;
        if head.status() == 200 {
            status("Exists", &format!("{} ({})", short(&layer.digest), super::human_size(layer.size)));
            continue;
        }
        status("Pushing", &format!("{} ({})", short(&layer.digest), super::human_size(layer.size)));
        client.upload(layer, chunk, status)?;
    }
    if image.index.is_some() {
        for one in &image.platforms {
            put_manifest(&client, target, &one.manifest, media::MANIFEST, &one.manifest.digest)?;
        }
    }
    let (top, media_type) = image.top();
    put_manifest(&client, target, top, media_type, &target.tag)?;
    Ok(top.digest.clone())
}

/// Stores a manifest or index under `reference` (a tag, or its own digest) and checks the digest
/// the registry reports.
fn put_manifest(
    client: &Client,
    target: &RegistryRef,
    blob: &super::store::Blob,
    media_type: &str,
    reference: &str,
) -> Result<(), CliError> {
    let bytes = std::fs::read(&blob.path).at("read the manifest", &blob.path)?;
    let url = client.url(&format!("manifests/{reference}"));
    let mut put = client
        .send(|a, auth| with_auth(a.put(&url), auth).header("Content-Type", media_type).send(bytes.as_slice()))?;
    if put.status() != 201 {
        let what = if media_type == media::INDEX { "image index" } else { "manifest" };
        let at = if reference == target.tag {
            target.display()
        } else {
            format!("{}/{}@{reference}", target.registry, target.name)
        };
        return Err(client.refused(&format!("store the {what} as {at}"), &mut put));
    }
    let reported = put.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(String::from);
    if let Some(d) = reported.as_ref().filter(|d| **d != blob.digest) {
        return Err(CliError::msg(format!(
            "registry {} stored the manifest as {d}, but its digest is {}; the registry rewrote it",
            target.registry, blob.digest
        )));
    }
    Ok(())
}

/// Blobs up to this size go up in one `PUT`; larger ones in `PATCH` chunks of this size, each
/// retried from what the registry holds. `NIMIFY_UPLOAD_CHUNK_BYTES` changes it (at least 1 MiB
/// is sensible; registries may refuse tiny chunks).
fn chunk_size() -> u64 {
    std::env::var("NIMIFY_UPLOAD_CHUNK_BYTES").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(16 << 20)
}

/// Failed attempts allowed per blob before giving up (each resumes where the registry stands).
const UPLOAD_RETRIES: u32 = 3;

/// How one upload attempt failed.
enum Upload {
    /// The connection broke or the registry answered 5xx: worth another try.
    Transient(String),
    /// The registry answered 401: the token expired; ask for a new one and try again.
    Expired,
    /// The registry said no.
    Refused(CliError),
}

/// An upload session: its URL and how many bytes the registry has.
#[derive(Clone)]
struct Session {
    location: String,
    offset: u64,
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

/// Why a `GET /v2/` did not give a client.
enum Ping {
    /// Nothing answered over this scheme (refused, TLS handshake failed, timed out).
    Unreachable(CliError),
    /// Something answered that is not a registry.
    NotRegistry(CliError),
    /// The registry answered, and said no.
    Failed(CliError),
}

/// A base image in a registry: `REGISTRY/NAME[:TAG|@DIGEST]`, read with the same client (TLS,
/// credentials, loopback over plain HTTP) that pushes.
pub struct Puller {
    client: Client,
    reference: String,
}

/// Manifest types a base may be, newest first, for `Accept`.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

impl Puller {
    /// Connects to the registry of `spec` (what follows `docker://`) for reading.
    pub fn open(spec: &str, options: &PushOptions) -> Result<Self, CliError> {
        let (name_part, reference) = match spec.split_once('@') {
            Some((name, digest)) => (name.to_string(), digest.to_string()),
            None => match spec.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') && name.contains('/') => (name.to_string(), tag.to_string()),
                _ => (spec.to_string(), "latest".to_string()),
            },
        };
        let mut target = RegistryRef::parse(&name_part, "latest")?;
        // Docker Hub's names: `docker.io/alpine` is `library/alpine` on registry-1.docker.io.
        if matches!(target.registry.as_str(), "docker.io" | "index.docker.io") {
            target.registry = "registry-1.docker.io".into();
            if !target.name.contains('/') {
                target.name = format!("library/{}", target.name);
            }
        }
        let client = Client::connect(&target, options, "pull")?;
        Ok(Self { client, reference })
    }

    /// The tag or digest asked for.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// A manifest or index by tag or digest, with its digest (checked when asked by digest).
    pub fn manifest(&self, reference: &str) -> Result<(Value, String), CliError> {
        let url = self.client.url(&format!("manifests/{reference}"));
        let mut answer =
            self.client.send(|a, auth| with_auth(a.get(&url), auth).header("Accept", MANIFEST_TYPES).call())?;
        if answer.status() != 200 {
            return Err(self.client.refused(&format!("give manifest {}:{reference}", self.client.name), &mut answer));
        }
        let bytes =
            answer.body_mut().with_config().limit(4 << 20).read_to_vec().map_err(|e| {
                CliError::msg(format!("reading manifest {reference} from {}: {e}", self.client.registry))
            })?;
        let digest = format!("sha256:{}", super::layer::hex(&sha2::Sha256::digest(&bytes)));
        if reference.starts_with("sha256:") && digest != reference {
            return Err(CliError::msg(format!(
                "registry {} sent a manifest with digest {digest} for {reference}",
                self.client.registry
            )));
        }
        let doc = serde_json::from_slice(&bytes).map_err(|e| {
            CliError::msg(format!("manifest {reference} from {} is not JSON: {e}", self.client.registry))
        })?;
        Ok((doc, digest))
    }

    /// A blob's bytes, streamed (the store checks the digest).
    pub fn blob(&self, digest: &str) -> Result<impl std::io::Read + use<>, CliError> {
        let url = self.client.url(&format!("blobs/{digest}"));
        let mut answer = self.client.send(|a, auth| with_auth(a.get(&url), auth).call())?;
        if answer.status() != 200 {
            return Err(self.client.refused(&format!("give blob {digest}"), &mut answer));
        }
        Ok(answer.into_body().into_with_config().limit(u64::MAX).reader())
    }
}

/// Whether `url` is at `base` (`scheme://host[:port]`) itself: `http://reg:5000/v2/...` is,
/// `http://reg:50001/...`, `https://reg:5000/...` and `http://reg:5000.evil/...` are not.
fn same_origin(base: &str, url: &str) -> bool {
    url.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// One past the last byte of `Range: 0-N`, the registry's count of what it holds.
fn range_end(answer: &Response) -> Option<u64> {
    let range = answer.headers().get("range")?.to_str().ok()?;
    let last: u64 = range.trim_start_matches("bytes=").split_once('-')?.1.parse().ok()?;
    Some(last + 1)
}

/// `localhost[:port]`, `127.x.y.z[:port]` or `[::1][:port]`.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Contacts the registry and settles authentication, without sending anything: `image` calls
/// it before building, so a wrong address or password fails in seconds, not after the build.
pub fn check(target: &RegistryRef, options: &PushOptions) -> Result<(), CliError> {
    Client::connect(target, options, "pull,push").map(drop)
}

struct Client {
    agent: ureq::Agent,
    base: String,
    name: String,
    registry: String,
    /// The `Authorization` value; replaced when a bearer token expires mid-push.
    auth: std::sync::Mutex<Option<String>>,
    /// The challenge and credentials that gave `auth`, to ask again.
    login: Option<(String, Option<super::creds::Creds>)>,
    hint: &'static str,
    /// What a bearer token is asked for: `pull,push` to push, `pull` to read a base image.
    actions: &'static str,
}

impl Client {
    /// Checks the registry answers (`GET /v2/`) and settles authentication before any upload.
    /// A loopback registry (`localhost`, `127.0.0.0/8`, `::1`) is tried over HTTPS, then plain
    /// HTTP, as docker does; `--insecure` goes straight to plain HTTP for any host.
    fn connect(target: &RegistryRef, options: &PushOptions, actions: &'static str) -> Result<Self, CliError> {
        let schemes: &[&str] = if options.insecure {
            &["http"]
        } else if is_loopback(&target.registry) {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut first_error = None;
        for scheme in schemes {
            match Self::ping(target, options, scheme, actions) {
                Ok(client) => return Ok(client),
                Err(Ping::Unreachable(e)) => {
                    first_error.get_or_insert(e);
                }
                // Something that is no registry over HTTP (a TLS port's 400) would hide the real
                // HTTPS problem; a registry refusing the credentials is the problem.
                Err(Ping::NotRegistry(e)) => return Err(first_error.unwrap_or(e)),
                Err(Ping::Failed(e)) => return Err(e),
            }
        }
        Err(first_error.unwrap_or_else(|| CliError::msg(format!("cannot reach registry {}", target.registry))))
    }

    fn ping(target: &RegistryRef, options: &PushOptions, scheme: &str, actions: &'static str) -> Result<Self, Ping> {
        let agent = crate::http::agent(&load_certs(&options.ca_certs).map_err(Ping::Failed)?);
        let hint = if scheme == "http" {
            ""
        } else if is_loopback(&target.registry) {
            "; for a self-signed certificate pass --ca-cert FILE"
        } else {
            "; for a self-signed certificate pass --ca-cert FILE, for a plain-HTTP registry pass --insecure"
        };
        let mut client = Self {
            agent,
            base: format!("{scheme}://{}", target.registry),
            name: target.name.clone(),
            registry: target.registry.clone(),
            auth: std::sync::Mutex::new(None),
            login: None,
            hint,
            actions,
        };
        let ping = format!("{}/v2/", client.base);
        let first = client.send(|a, _| a.get(&ping).call()).map_err(Ping::Unreachable)?;
        if first.status() == 200 {
            return Ok(client);
        }
        if first.status() != 401 {
            return Err(Ping::NotRegistry(CliError::msg(format!(
                "{ping} answered {}; is {} an OCI registry?",
                first.status(),
                target.registry
            ))));
        }
        client.login(target, options, &first).map_err(Ping::Failed)?;
        Ok(client)
    }

    /// Answers a 401 on `GET /v2/` with credentials: `--creds`, else the stored ones.
    fn login(&mut self, target: &RegistryRef, options: &PushOptions, first: &Response) -> Result<(), CliError> {
        let ping = format!("{}/v2/", self.base);
        let challenge =
            first.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let creds = match &options.creds {
            Some(c) => Some(c.clone()),
            None => super::creds::stored(&target.registry)?,
        };
        let auth = self.authenticate(&challenge, creds.as_ref())?;
        *self.auth.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(auth);
        self.login = Some((challenge, creds.clone()));
        let mut again = self.send(|a, auth| with_auth(a.get(&ping), auth).call())?;
        match again.status().as_u16() {
            200 => Ok(()),
            401 | 403 => Err(wrong_creds(&target.registry, creds.as_ref())),
            _ => Err(self.refused("accept the credentials", &mut again)),
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
        let mut url = format!("{realm}?scope=repository:{}:{}", self.name, self.actions);
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

    /// Uploads `blob`: one `PUT` when it fits in a chunk, else `PATCH` chunks then a closing
    /// `PUT`. A broken connection or a 5xx is retried: a chunked upload asks the registry how
    /// much it holds (`GET` on the session) and goes on from there; otherwise it starts again.
    fn upload(&self, blob: &super::store::Blob, chunk: u64, status: &dyn Fn(&str, &str)) -> Result<(), CliError> {
        let bar = crate::term::bytes_bar("Uploading", blob.size);
        let mut failures = 0;
        let mut session: Option<Session> = None;
        let result = loop {
            let attempt = match session.take() {
                Some(s) => self.resume(s),
                None => self.start().map(|location| Session { location, offset: 0 }),
            };
            let attempt = attempt.and_then(|s| self.send_blob(blob, s, chunk, &bar, &mut session));
            match attempt {
                Ok(()) => break Ok(()),
                Err(Upload::Expired) if failures < UPLOAD_RETRIES => {
                    failures += 1;
                    bar.suspend(|| status("Renewing", &format!("the registry token for {}", self.registry)));
                    if let Err(e) = self.relogin() {
                        break Err(e);
                    }
                }
                Err(Upload::Expired) => {
                    break Err(CliError::msg(format!(
                        "registry {} kept refusing the upload of blob {} with 401 after new tokens",
                        self.registry,
                        short(&blob.digest)
                    )));
                }
                Err(Upload::Transient(e)) if failures < UPLOAD_RETRIES => {
                    failures += 1;
                    bar.suspend(|| status("Retrying", &format!("{} after: {e}", short(&blob.digest))));
                    std::thread::sleep(std::time::Duration::from_millis(250 << failures));
                }
                Err(Upload::Transient(e)) => {
                    break Err(CliError::with_help(
                        format!(
                            "cannot upload blob {} to registry {}: {} attempts failed, the last with: {e}",
                            short(&blob.digest),
                            self.registry,
                            UPLOAD_RETRIES + 1
                        ),
                        "check the network and the registry's health, then run the command again: blobs already stored are not sent again",
                    ));
                }
                Err(Upload::Refused(e)) => break Err(e),
            }
        };
        bar.finish_and_clear();
        result
    }

    /// `POST blobs/uploads/`: a new session's URL.
    fn start(&self) -> Result<String, Upload> {
        let url = self.url("blobs/uploads/");
        let mut begun = self
            .send(|a, auth| with_auth(a.post(&url), auth).send_empty())
            .map_err(|e| Upload::Transient(e.to_string()))?;
        match begun.status().as_u16() {
            202 => self
                .location(&begun)
                .ok_or_else(|| Upload::Refused(self.refused("give an upload location", &mut begun))),
            401 => Err(Upload::Expired),
            500.. => Err(Upload::Transient(format!("starting an upload: {}", begun.status()))),
            _ => Err(Upload::Refused(self.refused("start a blob upload", &mut begun))),
        }
    }

    /// Where an interrupted session stands (`GET` answers `Range: 0-N`); a session the registry
    /// no longer knows is replaced by a new one.
    fn resume(&self, s: Session) -> Result<Session, Upload> {
        let mine = self.owns(&s.location);
        let Ok(answer) = self.send(|a, auth| with_auth(a.get(&s.location), auth.filter(|_| mine)).call()) else {
            return self.start().map(|location| Session { location, offset: 0 });
        };
        if answer.status() != 204 {
            return self.start().map(|location| Session { location, offset: 0 });
        }
        // `0-0` is both "nothing" and "one byte" in distribution's answers: start afresh then.
        match range_end(&answer) {
            Some(offset) if offset > 1 => {
                Ok(Session { offset, location: self.location(&answer).unwrap_or(s.location) })
            }
            _ => self.start().map(|location| Session { location, offset: 0 }),
        }
    }

    /// Sends the rest of `blob` from `s.offset`, recording progress in `progress`.
    fn send_blob(
        &self,
        blob: &super::store::Blob,
        mut s: Session,
        chunk: u64,
        bar: &indicatif::ProgressBar,
        progress: &mut Option<Session>,
    ) -> Result<(), Upload> {
        let transient = |e: CliError| Upload::Transient(e.to_string());
        let close = |location: &str| {
            format!("{location}{}digest={}", if location.contains('?') { '&' } else { '?' }, blob.digest)
        };
        let mine = self.owns(&s.location);
        if s.offset == 0 && blob.size <= chunk {
            bar.set_position(0);
            let put = close(&s.location);
            let mut done = self
                .send(|a, auth| {
                    let file = std::fs::File::open(&blob.path).map_err(ureq::Error::from)?;
                    let body = ureq::SendBody::from_owned_reader(bar.wrap_read(file));
                    with_auth(a.put(&put), auth.filter(|_| mine))
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Length", blob.size.to_string())
                        .send(body)
                })
                .map_err(transient)?;
            return match done.status().as_u16() {
                201 => Ok(()),
                401 => Err(Upload::Expired),
                500.. => Err(Upload::Transient(format!("storing the blob: {}", done.status()))),
                _ => Err(Upload::Refused(self.refused(&format!("store blob {}", blob.digest), &mut done))),
            };
        }
        let mut file = std::fs::File::open(&blob.path)
            .map_err(|e| Upload::Refused(CliError::io("read the blob", &blob.path)(e)))?;
        // Kept from the start, so that a failure on this attempt's first chunk resumes this
        // session rather than starting again from byte 0.
        *progress = Some(s.clone());
        if s.offset > 0 {
            bar.suspend(|| crate::term::verbose("Resuming", format!("{} at byte {}", short(&blob.digest), s.offset)));
        }
        while s.offset < blob.size {
            let mine = self.owns(&s.location);
            let end = blob.size.min(s.offset + chunk);
            let mut bytes = vec![0u8; (end - s.offset) as usize];
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(s.offset))
                .and_then(|_| std::io::Read::read_exact(&mut file, &mut bytes))
                .map_err(|e| Upload::Refused(CliError::io("read the blob", &blob.path)(e)))?;
            bar.set_position(s.offset);
            let range = format!("{}-{}", s.offset, end - 1);
            let mut sent = self
                .send(|a, auth| {
                    let body = ureq::SendBody::from_owned_reader(bar.wrap_read(std::io::Cursor::new(bytes)));
                    with_auth(a.patch(&s.location), auth.filter(|_| mine))
                        .header("Content-Type", "application/octet-stream")
                        .header("Content-Range", &range)
                        .header("Content-Length", (end - s.offset).to_string())
                        .send(body)
                })
                .map_err(transient)?;
            match sent.status().as_u16() {
                202 => {}
                401 => return Err(Upload::Expired),
                416 | 500.. => return Err(Upload::Transient(format!("bytes {range}: {}", sent.status()))),
                _ => {
                    return Err(Upload::Refused(
                        self.refused(&format!("take bytes {range} of blob {}", blob.digest), &mut sent),
                    ));
                }
            }
            let offset = range_end(&sent).unwrap_or(end);
            if offset <= s.offset {
                return Err(Upload::Transient(format!("the registry took bytes {range} but reports holding {offset}")));
            }
            s.location = self.location(&sent).unwrap_or(s.location);
            s.offset = offset;
            *progress = Some(s.clone());
        }
        let put = close(&s.location);
        let mine = self.owns(&put);
        let mut done = self
            .send(|a, auth| with_auth(a.put(&put), auth.filter(|_| mine)).header("Content-Length", "0").send_empty())
            .map_err(transient)?;
        match done.status().as_u16() {
            201 => Ok(()),
            401 => Err(Upload::Expired),
            500.. => Err(Upload::Transient(format!("closing the upload: {}", done.status()))),
            _ => Err(Upload::Refused(self.refused(&format!("store blob {}", blob.digest), &mut done))),
        }
    }

    /// The `Location` an upload answer points at, made absolute.
    fn location(&self, answer: &Response) -> Option<String> {
        let location = answer.headers().get("location")?.to_str().ok()?;
        Some(if location.starts_with("http") { location.to_string() } else { format!("{}{location}", self.base) })
    }

    /// Asks for a new token with the first login's challenge and credentials (bearer tokens
    /// last minutes; a large push outlives them). A registry without login has nothing to renew.
    fn relogin(&self) -> Result<(), CliError> {
        let Some((challenge, creds)) = &self.login else { return Ok(()) };
        let auth = self.authenticate(challenge, creds.as_ref())?;
        *self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(auth);
        Ok(())
    }

    /// Whether `url` is on this registry (scheme, host and port): credentials go nowhere else,
    /// whatever `Location` a registry answers with.
    fn owns(&self, url: &str) -> bool {
        same_origin(&self.base, url)
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.name)
    }

    /// Sends one request; a transport failure becomes an error naming the registry.
    fn send(
        &self,
        request: impl FnOnce(&ureq::Agent, Option<&str>) -> Result<Response, ureq::Error>,
    ) -> Result<Response, CliError> {
        let auth = self.auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        request(&self.agent, auth.as_deref()).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_only_locations_on_the_registry_itself() {
        let base = "http://127.0.0.1:5000";
        assert!(same_origin(base, "http://127.0.0.1:5000/v2/x/blobs/uploads/1?_state=a"));
        assert!(same_origin(base, base));
        for other in [
            "http://127.0.0.1:50001/v2/",
            "https://127.0.0.1:5000/v2/",
            "http://127.0.0.1:5000.evil.example/v2/",
            "http://127.0.0.1:5000@evil.example/v2/",
            "http://storage.example/bucket/blob",
        ] {
            assert!(!same_origin(base, other), "{other}");
        }
    }

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
