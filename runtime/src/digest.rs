//! The start-up integrity check behind `NIMIFY_MODEL_SHA256`: an image records the sha256 of each
//! model file it packs, and the service refuses to start when the file it finds differs, so a
//! model layer swapped or corrupted after the build never serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::model::LoadError;

/// Parses the expected digests (the one spelling in [`nimify_model::contract::ModelDigests`]) for
/// a service whose models are `names`. Returns digests by model name.
pub fn parse_expected(spec: &str, names: &[&str]) -> Result<BTreeMap<String, String>, ConfigError> {
    nimify_model::contract::ModelDigests::parse(spec, names)
        .map_err(|why| ConfigError::Invalid(format!("model_sha256 (NIMIFY_MODEL_SHA256) {why}")))
}

/// Hashes each named model file and compares it with the expected digest.
pub fn verify(expected: &BTreeMap<String, String>, models: &[(String, PathBuf)]) -> Result<(), LoadError> {
    for (name, path) in models {
        let Some(want) = expected.get(name) else { continue };
        let found = file_digest(path)?;
        if &found != want {
            return Err(LoadError::DigestMismatch {
                name: name.clone(),
                path: path.clone(),
                expected: want.clone(),
                found,
            });
        }
    }
    Ok(())
}

fn file_digest(path: &Path) -> Result<String, LoadError> {
    nimify_model::file_sha256(path)
        .map_err(|e| LoadError::Signature { path: path.to_path_buf(), source: nimify_model::ModelError::Io(e) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_spec_names_the_setting() {
        let err = parse_expected("abc", &["iris"]).expect_err("short").to_string();
        assert!(err.contains("model_sha256 (NIMIFY_MODEL_SHA256) holds \"abc\""), "{err}");
    }
}
