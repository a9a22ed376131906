//! OCI image documents (config, manifest, index) written with sorted maps so their bytes, and so
//! the digests, depend only on their content; and reading a base image from an OCI layout or
//! archive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::platform::Platform;
use super::registry::{Puller, PushOptions};
use super::store::{Blob, BlobStore};
use crate::CliError;

/// OCI media types.
pub mod media {
    /// Image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// Image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Gzip-compressed layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
}

/// The annotation an OCI layout's index uses for tags.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A layer with what it is for.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    /// `base`, `libraries`, `onnxruntime`, `app` or `model`.
    pub role: &'static str,
    /// Its media type.
    pub media_type: String,
    /// The stored blob.
    pub blob: Blob,
    /// The history line.
    pub created_by: String,
}

/// The runtime settings of the image config.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// OCI architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// OCI architecture variant (`v8`).
    pub variant: Option<String>,
    /// Entrypoint argv.
    pub entrypoint: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// `uid:gid`.
    pub user: String,
    /// Exposed TCP port (HTTP).
    pub port: u16,
    /// Exposed TCP port (gRPC).
    pub grpc_port: u16,
    /// Working directory.
    pub working_dir: String,
    /// RFC 3339 creation time.
    pub created: String,
}

/// The config document for `layers` (base layers first) and the base's history.
pub fn config_json(run: &RunConfig, layers: &[ImageLayer], base_history: &[Value]) -> Vec<u8> {
    let diff_ids: Vec<&str> = layers.iter().filter_map(|l| l.blob.diff_id.as_deref()).collect();
    let mut history = base_history.to_vec();
    history.extend(
        layers.iter().filter(|l| l.role != "base").map(|l| json!({"created": run.created, "created_by": l.created_by})),
    );
    let ports: BTreeMap<String, Value> =
        [run.port, run.grpc_port].iter().map(|p| (format!("{p}/tcp"), json!({}))).collect();
    let mut doc = json!({
        "created": run.created,
        "architecture": run.architecture,
        "os": "linux",
        "config": {
            "User": run.user,
            "ExposedPorts": ports,
            "Env": run.env,
            "Entrypoint": run.entrypoint,
            "WorkingDir": run.working_dir,
            "Labels": run.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if let Some(v) = &run.variant {
        doc["variant"] = json!(v);
    }
    doc.to_string().into_bytes()
}

/// The manifest document.
pub fn manifest_json(config: &Blob, layers: &[ImageLayer]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|l| json!({"mediaType": l.media_type, "digest": l.blob.digest, "size": l.blob.size}))
        .collect();
    json!({
        "schemaVersion": 2,
        "mediaType": media::MANIFEST,
        "config": {"mediaType": media::CONFIG, "digest": config.digest, "size": config.size},
        "layers": layers,
    })
    .to_string()
    .into_bytes()
}

/// A descriptor of a manifest or index (`media_type`) for an index, tagged when `tag` is given.
pub fn descriptor(media_type: &str, blob: &Blob, tag: Option<&str>) -> Value {
    let mut d = json!({"mediaType": media_type, "digest": blob.digest, "size": blob.size});
    if let Some(tag) = tag {
        d["annotations"] = json!({ REF_NAME: tag });
    }
    d
}

/// The OCI `platform` object of a descriptor.
pub fn platform_json(platform: &Platform) -> Value {
    let mut p = json!({"architecture": platform.architecture, "os": "linux"});
    if let Some(v) = platform.variant {
        p["variant"] = json!(v);
    }
    p
}

/// The image index of a multi-platform image: each platform's manifest.
pub fn index_json(manifests: &[(&Blob, &Platform)]) -> Vec<u8> {
    let manifests: Vec<Value> = manifests
        .iter()
        .map(|(m, p)| {
            let mut d = descriptor(media::MANIFEST, m, None);
            d["platform"] = platform_json(p);
            d
        })
        .collect();
    json!({"schemaVersion": 2, "mediaType": media::INDEX, "manifests": manifests}).to_string().into_bytes()
}

pub use nimify::__private::rfc3339;

/// A base image read from a local layout or archive.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// What was asked for.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
    /// Its layers, imported into the store.
    pub layers: Vec<ImageLayer>,
    /// Its `Env`.
    pub env: Vec<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its history entries.
    pub history: Vec<Value>,
}

/// Reads `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]` or `docker://...` and imports the layers of
/// its `platform` image into `store` (the one image of a single-platform base must be for it).
pub fn load_base(
    reference: &str,
    store: &BlobStore,
    access: &PushOptions,
    platform: &Platform,
) -> Result<BaseImage, CliError> {
    let bad = |why: String| CliError::msg(format!("base image {reference}: {why}"));
    let source = Source::open(reference, store, access)?;
    let (mut manifest, mut digest) = source.top()?;
    if manifest["manifests"].is_array() {
        let chosen = pick_platform(&manifest, platform).map_err(bad)?;
        digest = str_of(&chosen, "digest").to_string();
        manifest = source.manifest(&digest)?;
    }
    let config = source.blob_json(str_of(&manifest["config"], "digest"))?;
    // A config without an architecture says nothing to check against.
    if let Some(arch) = config["architecture"].as_str().filter(|a| *a != platform.architecture) {
        return Err(CliError::with_help(
            format!("base image {reference}: it is a linux/{arch} image, and this one is for {platform}"),
            format!("use a {platform} base, or an image index holding one"),
        ));
    }
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let descriptors = manifest["layers"].as_array().cloned().unwrap_or_default();
    if descriptors.len() != diff_ids.len() {
        return Err(bad(format!(
            "its manifest lists {} layers but its config {} diff_ids",
            descriptors.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (d, diff_id) in descriptors.iter().zip(diff_ids) {
        // Docker's gzip layer type names the same bytes as OCI's; the image is an OCI one.
        let media_type = match str_of(d, "mediaType") {
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => media::LAYER_GZIP.to_string(),
            other => other.to_string(),
        };
        if !media_type.contains("tar") {
            return Err(bad(format!("layer media type {media_type:?} is not a tar layer")));
        }
        let imported = source.import(str_of(d, "digest"), store)?;
        layers.push(ImageLayer {
            role: "base",
            media_type,
            blob: Blob { diff_id: Some(diff_id.to_string()), ..imported },
            created_by: format!("base image {reference}"),
        });
    }
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect()).unwrap_or_default()
    };
    let labels = config["config"]["Labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    Ok(BaseImage {
        reference: reference.to_string(),
        digest,
        layers,
        env: strings(&config["config"]["Env"]),
        labels,
        history: config["history"].as_array().cloned().unwrap_or_default(),
    })
}

/// Where a base image's documents and blobs come from.
enum Source {
    /// An OCI layout directory (an `oci-archive:` unpacked into one), and the tag asked for.
    Layout { dir: PathBuf, tag: Option<String>, reference: String },
    /// A registry.
    Registry(Box<Puller>, String),
}

impl Source {
    fn open(reference: &str, store: &BlobStore, access: &PushOptions) -> Result<Self, CliError> {
        let bad = |why: String| CliError::msg(format!("base image {reference}: {why}"));
        if let Some(rest) = reference.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            let dir = store.dir().join("base-archive");
            let f = std::fs::File::open(&file).map_err(|e| bad(format!("cannot open {}: {e}", file.display())))?;
            tar::Archive::new(f).unpack(&dir).map_err(|e| bad(format!("cannot unpack {}: {e}", file.display())))?;
            Ok(Self::Layout { dir, tag, reference: reference.into() })
        } else if let Some(rest) = reference.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            Ok(Self::Layout { dir, tag, reference: reference.into() })
        } else if let Some(rest) = reference.strip_prefix("docker://") {
            Ok(Self::Registry(Box::new(Puller::open(rest, access)?), reference.into()))
        } else {
            Err(bad("unsupported transport; use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://REGISTRY/NAME[:TAG|@DIGEST]".into()))
        }
    }

    fn bad(&self, why: String) -> CliError {
        let reference = match self {
            Self::Layout { reference, .. } | Self::Registry(_, reference) => reference,
        };
        CliError::msg(format!("base image {reference}: {why}"))
    }

    /// The document the reference names (an index or a manifest) and its digest.
    fn top(&self) -> Result<(Value, String), CliError> {
        match self {
            Self::Layout { dir, tag, .. } => {
                let index = self.read(&dir.join("index.json"))?;
                let descriptor = pick_manifest(&index, tag.as_deref()).map_err(|e| self.bad(e))?;
                let digest = str_of(&descriptor, "digest").to_string();
                Ok((self.manifest(&digest)?, digest))
            }
            Self::Registry(puller, _) => puller.manifest(puller.reference()),
        }
    }

    /// A manifest by digest (a registry serves those apart from blobs).
    fn manifest(&self, digest: &str) -> Result<Value, CliError> {
        match self {
            Self::Layout { .. } => self.blob_json(digest),
            Self::Registry(puller, _) => puller.manifest(digest).map(|(doc, _)| doc),
        }
    }

    /// A JSON blob (the config) by digest.
    fn blob_json(&self, digest: &str) -> Result<Value, CliError> {
        match self {
            Self::Layout { dir, .. } => self.read(&dir.join("blobs").join(digest.replacen(':', "/", 1))),
            Self::Registry(puller, _) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::Read::take(puller.blob(digest)?, 16 << 20), &mut bytes)
                    .map_err(|e| self.bad(format!("cannot read {digest}: {e}")))?;
                let actual = format!("sha256:{}", super::layer::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
                if actual != digest {
                    return Err(self.bad(format!("the registry sent {actual} for {digest}")));
                }
                serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("{digest} is not valid JSON: {e}")))
            }
        }
    }

    fn read(&self, path: &Path) -> Result<Value, CliError> {
        let text = std::fs::read(path).map_err(|e| self.bad(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_slice(&text).map_err(|e| self.bad(format!("{} is not valid JSON: {e}", path.display())))
    }

    /// Copies a layer into `store`, checking its digest.
    fn import(&self, digest: &str, store: &BlobStore) -> Result<Blob, CliError> {
        match self {
            Self::Layout { dir, .. } => store.import(&dir.join("blobs").join(digest.replacen(':', "/", 1)), digest),
            Self::Registry(puller, reference) => {
                store.import_from(puller.blob(digest)?, digest, &format!("{digest} of {reference}"))
            }
        }
    }
}

/// `path[:tag]`, where a final `:tag` holds no `/`.
pub fn split_tag(s: &str) -> (PathBuf, Option<String>) {
    match s.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !path.is_empty() => (PathBuf::from(path), Some(tag.to_string())),
        _ => (PathBuf::from(s), None),
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn pick_manifest(index: &Value, tag: Option<&str>) -> Result<Value, String> {
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let tags: Vec<&str> = manifests.iter().filter_map(|m| m["annotations"][REF_NAME].as_str()).collect();
    match tag {
        Some(t) => manifests
            .iter()
            .find(|m| m["annotations"][REF_NAME] == t)
            .cloned()
            .ok_or_else(|| format!("no image tagged {t:?} (tags: {})", tags.join(", "))),
        None if manifests.len() == 1 => Ok(manifests[0].clone()),
        None => Err(format!("holds {} images; name one with :TAG (tags: {})", manifests.len(), tags.join(", "))),
    }
}

fn pick_platform(index: &Value, platform: &Platform) -> Result<Value, String> {
    let arch = platform.architecture;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let name = |m: &Value| format!("{}/{}", str_of(&m["platform"], "os"), str_of(&m["platform"], "architecture"));
    manifests
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
        .cloned()
        .ok_or_else(|| {
            let has: Vec<String> = manifests.iter().map(name).collect();
            format!("has no {platform} image (it has: {})", has.join(", "))
        })
}

/// Reads a layout file as JSON (an existing layout's index, when an output merges into it).
pub fn read_layout_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn tags_split_off_the_last_colon() {
        assert_eq!(split_tag("out/dir:v1"), (PathBuf::from("out/dir"), Some("v1".into())));
        assert_eq!(split_tag("out/dir"), (PathBuf::from("out/dir"), None));
        assert_eq!(split_tag("a:b/c"), (PathBuf::from("a:b/c"), None));
    }
}
