//! The records passed between nimify's programs, as types both sides share (the way cargo-dist
//! keeps its `dist-manifest.json` in `cargo-dist-schema`):
//!
//! - [`ServiceManifest`]: what a service binary prints for `<bin> manifest` (its models and where
//!   their files are), read by `cargo nimify image`;
//! - [`ImageRecord`]: what `cargo nimify image` leaves in `target/nimify/<package>/image.json`,
//!   read by `chart` and `deploy`;
//! - [`ModelDigests`]: the one spelling of the model sha256s that the image's
//!   `io.nimify.model.sha256` label and `NIMIFY_MODEL_SHA256` carry and the service checks at
//!   start-up.
//!
//! Each record carries [`SCHEMA_VERSION`]; a reader refuses another version with an error that
//! says which program to rerun, rather than misreading fields.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of every record in this module. Bump it on any change to a record: readers refuse
/// unknown fields, so even an added field needs a new version.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The record's path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bytes are not this record.
    #[error("{what} is not valid: {detail}")]
    Invalid {
        /// The record (a path, or the command that printed it).
        what: String,
        /// serde's message, with the field's path.
        detail: String,
    },
    /// Another nimify wrote it.
    #[error("{what} has schema version {found}, but this nimify reads version {SCHEMA_VERSION}; {rerun}")]
    Version {
        /// The record.
        what: String,
        /// The version it declares.
        found: u32,
        /// What to run again to get a record of this version.
        rerun: &'static str,
    },
}

/// Reads `bytes` as a `T` stamped with `schema_version`, checking the version first so a record
/// from another nimify gets the version error, not a confusing field error.
fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str, rerun: &'static str) -> Result<T, ContractError> {
    #[derive(Deserialize)]
    struct Stamp {
        schema_version: Option<u32>,
    }
    let invalid = |detail: String| ContractError::Invalid { what: what.to_string(), detail };
    let stamp: Stamp = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    match stamp.schema_version {
        Some(SCHEMA_VERSION) => {}
        Some(found) => return Err(ContractError::Version { what: what.to_string(), found, rerun }),
        None => return Err(invalid(format!("no schema_version (written before records were versioned); {rerun}"))),
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| invalid(format!("{} at `{}`", e.inner(), e.path())))
}

/// `<bin> manifest`: the models a service binary serves, printed without loading any of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceManifest {
    /// Always [`SCHEMA_VERSION`] when written by this nimify.
    pub schema_version: u32,
    /// Every model, in the order the service registers them.
    pub models: Vec<PlannedModel>,
}

/// One model of a [`ServiceManifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedModel {
    /// The name it is served under.
    pub name: String,
    /// The file's path as compiled into the binary.
    pub path: PathBuf,
}

impl ServiceManifest {
    /// A manifest of this schema version.
    pub fn new(models: Vec<PlannedModel>) -> Self {
        Self { schema_version: SCHEMA_VERSION, models }
    }

    /// Reads what `<bin> manifest` printed; `bin` names the binary in errors.
    pub fn parse(stdout: &[u8], bin: &str) -> Result<Self, ContractError> {
        parse(stdout, &format!("`{bin} manifest`"), "rebuild the service with this nimify")
    }

    /// One line of JSON; fails only for a path that is not UTF-8.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// `target/nimify/<package>/image.json`: the image `cargo nimify image` built last, which
/// `chart` and `deploy` deploy by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Always [`SCHEMA_VERSION`] when written by this nimify.
    pub schema_version: u32,
    /// Where the image was written, as skopeo spells it (`docker://...`, `oci:DIR:TAG`, ...).
    pub reference: String,
    /// The digest, `sha256:<hex>`, of what the tag names: the manifest, or the image index of a
    /// multi-platform image.
    pub digest: String,
    /// Each platform's manifest of a multi-platform image (empty for a single-platform one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformRecord>,
    /// The repository a chart pulls from (`registry/name` after a push, else the name).
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The service's package.
    pub package: String,
    /// The package's version.
    pub version: String,
    /// The binary (the image's entrypoint).
    pub bin: String,
    /// The port the service listens on.
    pub port: u16,
    /// The gRPC port it listens on; records written before nimify served gRPC have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<u16>,
    /// The numeric user it runs as.
    pub user: u32,
    /// The base image, when one replaced the host's libraries.
    pub base: Option<BaseRecord>,
    /// The model files it carries.
    pub models: Vec<ModelRecord>,
    /// Its layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Compressed size of the layers, config and manifest, in bytes.
    pub size: u64,
}

/// The base image of an [`ImageRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseRecord {
    /// As given to `--base`.
    pub reference: String,
    /// Its manifest digest.
    pub digest: String,
}

/// One platform's image in a multi-platform [`ImageRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformRecord {
    /// `linux/amd64`, `linux/arm64`.
    pub platform: String,
    /// Its manifest's digest.
    pub digest: String,
    /// Compressed size of its layers, config and manifest, in bytes.
    pub size: u64,
}

/// A model in an [`ImageRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// Served name.
    pub name: String,
    /// File name under the image's model directory.
    pub file: String,
    /// sha256 hex of the file.
    pub sha256: String,
    /// Bytes of the file and its external data (the chart sizes memory from it).
    pub size: u64,
}

/// A layer in an [`ImageRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// What it holds: `base`, `libraries`, `onnxruntime`, `app` or `model`.
    pub role: String,
    /// Digest of the compressed blob.
    pub digest: String,
    /// Compressed bytes.
    pub size: u64,
    /// Bytes of the tar inside (unknown for a base image's layers).
    pub uncompressed_size: Option<u64>,
}

impl ImageRecord {
    /// Reads `image.json`.
    pub fn read(path: &Path) -> Result<Self, ContractError> {
        let bytes = std::fs::read(path).map_err(|source| ContractError::Read { path: path.to_path_buf(), source })?;
        parse(&bytes, &path.display().to_string(), "run `cargo nimify image` again")
    }

    /// Pretty JSON, as written to `image.json`.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// The models' digests, as the image's label spells them.
    pub fn model_digests(&self) -> ModelDigests {
        ModelDigests::new(self.models.iter().map(|m| (m.name.as_str(), m.sha256.as_str())))
    }

    /// True when the image went to a registry a cluster can pull from.
    pub fn pushed(&self) -> bool {
        self.reference.starts_with("docker://")
    }

    /// `repository@digest` (or `repository:tag` without a digest).
    pub fn pull_reference(&self) -> String {
        if self.digest.is_empty() {
            format!("{}:{}", self.repository, self.tag)
        } else {
            format!("{}@{}", self.repository, self.digest)
        }
    }
}

/// Model name → sha256 hex: the rule for `io.nimify.model.sha256`, `NIMIFY_MODEL_SHA256` and the
/// chart's `model.sha256`. One model is its bare digest; several are `name=digest` pairs joined
/// by commas, in the service's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelDigests(
    /// `(model name, sha256 hex)`, in the service's order.
    pub Vec<(String, String)>,
);

impl std::fmt::Display for ModelDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_slice() {
            [(_, one)] => f.write_str(one),
            many => {
                for (i, (name, hex)) in many.iter().enumerate() {
                    write!(f, "{}{name}={hex}", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
        }
    }
}

impl ModelDigests {
    /// From `(model name, sha256 hex)` pairs, in the service's order.
    pub fn new<'a>(models: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(models.into_iter().map(|(name, hex)| (name.to_string(), hex.to_string())).collect())
    }

    /// Reads the spelling back for a service whose models are `names`: one digest (only valid for
    /// a single model) or `name=digest` pairs, each digest 64 hex digits, optionally `sha256:`
    /// prefixed, any case. The error says what is wrong, for the caller to prefix with the
    /// setting's name.
    pub fn parse(spec: &str, names: &[&str]) -> Result<BTreeMap<String, String>, String> {
        let hex = |hex: &str| -> Result<String, String> {
            let hex = hex.trim().trim_start_matches("sha256:").to_ascii_lowercase();
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(hex)
            } else {
                Err(format!("holds {hex:?}, which is not a 64-digit hex sha256"))
            }
        };
        let spec = spec.trim();
        if !spec.contains('=') {
            return match names {
                [one] => Ok(BTreeMap::from([((*one).to_string(), hex(spec)?)])),
                _ => Err(format!(
                    "is one digest but the service has {} models ({}); give `name=digest` pairs separated by commas",
                    names.len(),
                    names.join(", ")
                )),
            };
        }
        let mut expected = BTreeMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, digest) = pair.split_once('=').ok_or_else(|| format!("entry {pair:?} is not `name=digest`"))?;
            if !names.contains(&name.trim()) {
                return Err(format!(
                    "names model {:?}, which this service does not have (it has {})",
                    name.trim(),
                    names.join(", ")
                ));
            }
            if expected.insert(name.trim().to_string(), hex(digest)?).is_some() {
                return Err(format!("names model {:?} twice", name.trim()));
            }
        }
        let missing: Vec<&str> = names.iter().copied().filter(|n| !expected.contains_key(*n)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "has no digest for model {} (give one `name=digest` pair per model)",
                missing.join(", ")
            ));
        }
        Ok(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn record() -> ImageRecord {
        ImageRecord {
            schema_version: SCHEMA_VERSION,
            reference: "docker://127.0.0.1:5000/ml/iris:0.1.0".into(),
            digest: format!("sha256:{A}"),
            platforms: Vec::new(),
            repository: "127.0.0.1:5000/ml/iris".into(),
            tag: "0.1.0".into(),
            package: "example-iris".into(),
            version: "0.1.0".into(),
            bin: "example-iris".into(),
            port: 8000,
            grpc_port: Some(8001),
            user: 65532,
            base: None,
            models: vec![ModelRecord { name: "iris".into(), file: "iris.onnx".into(), sha256: B.into(), size: 9 }],
            layers: vec![LayerRecord {
                role: "model".into(),
                digest: format!("sha256:{B}"),
                size: 3,
                uncompressed_size: Some(9),
            }],
            size: 12,
        }
    }

    #[test]
    fn an_image_record_round_trips_through_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.json");
        std::fs::write(&path, record().to_json().expect("json")).expect("write");
        assert_eq!(ImageRecord::read(&path).expect("read"), record());
        assert_eq!(record().pull_reference(), format!("127.0.0.1:5000/ml/iris@sha256:{A}"));
        assert!(record().pushed());
    }

    #[test]
    fn records_of_another_version_or_shape_are_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.json");
        let mut json: serde_json::Value = serde_json::from_str(&record().to_json().expect("json")).expect("json");
        json["schema_version"] = 2.into();
        std::fs::write(&path, json.to_string()).expect("write");
        let err = ImageRecord::read(&path).expect_err("version 2").to_string();
        assert!(err.contains("schema version 2") && err.contains("run `cargo nimify image` again"), "{err}");
        json.as_object_mut().expect("object").remove("schema_version");
        std::fs::write(&path, json.to_string()).expect("write");
        let err = ImageRecord::read(&path).expect_err("unversioned").to_string();
        assert!(err.contains("no schema_version"), "{err}");
        json["schema_version"] = 1.into();
        json["models"][0]["size"] = "big".into();
        std::fs::write(&path, json.to_string()).expect("write");
        let err = ImageRecord::read(&path).expect_err("bad field").to_string();
        assert!(err.contains("at `models[0].size`"), "{err}");
        let err = ImageRecord::read(&dir.path().join("missing.json")).expect_err("missing").to_string();
        assert!(err.starts_with("cannot read") && err.contains("missing.json"), "{err}");
        let err = ServiceManifest::parse(b"Usage: svc [OPTIONS]", "svc").expect_err("not json").to_string();
        assert!(err.starts_with("`svc manifest` is not valid"), "{err}");
    }

    #[test]
    fn the_manifest_round_trips() {
        let m = ServiceManifest::new(vec![PlannedModel { name: "iris".into(), path: "/m/iris.onnx".into() }]);
        assert_eq!(ServiceManifest::parse(m.to_json().expect("json").as_bytes(), "svc").expect("parse"), m);
    }

    #[test]
    fn digests_are_bare_for_one_model_and_named_pairs_for_several() {
        let one = ModelDigests(vec![("iris".into(), A.into())]);
        assert_eq!(one.to_string(), A);
        assert_eq!(ModelDigests::parse(&one.to_string(), &["iris"]).expect("one")["iris"], A);
        let two = ModelDigests(vec![("a".into(), A.into()), ("b".into(), B.into())]);
        assert_eq!(two.to_string(), format!("a={A},b={B}"));
        let back = ModelDigests::parse(&two.to_string(), &["a", "b"]).expect("two");
        assert_eq!((back["a"].as_str(), back["b"].as_str()), (A, B));
        let upper = format!("sha256:{}", A.to_uppercase());
        assert_eq!(ModelDigests::parse(&upper, &["iris"]).expect("prefixed, upper case")["iris"], A);
    }

    #[test]
    fn bad_digest_specs_say_what_is_wrong() {
        for (spec, names, want) in [
            ("abc", &["m"][..], "not a 64-digit hex sha256"),
            (A, &["a", "b"][..], "is one digest but the service has 2 models (a, b)"),
            (&format!("c={A}") as &str, &["a", "b"][..], "names model \"c\""),
            ("a", &["a"][..], "not a 64-digit"),
            (&format!("a={A}") as &str, &["a", "b"][..], "has no digest for model b"),
            (&format!("a={A},a={B}") as &str, &["a"][..], "names model \"a\" twice"),
            (&format!("a={A},junk") as &str, &["a"][..], "entry \"junk\" is not `name=digest`"),
        ] {
            let err = ModelDigests::parse(spec, names).expect_err(spec);
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
