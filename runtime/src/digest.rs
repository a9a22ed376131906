//! The start-up integrity check behind `NIMIFY_MODEL_SHA256`: an image records the sha256 of each
//! model file it packs, and the service refuses to start when the file it finds differs, so a
//! model layer swapped or corrupted after the build never serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::ConfigError;
use crate::model::LoadError;

/// Parses the expected digests: one bare hex digest (only valid for a single model) or
/// `name=digest` pairs separated by commas. Returns digests by model name.
pub fn parse_expected(spec: &str, names: &[&str]) -> Result<BTreeMap<String, String>, ConfigError> {
    let invalid = |why: String| ConfigError::Invalid(format!("model_sha256 (NIMIFY_MODEL_SHA256) {why}"));
    let check_hex = |hex: &str| -> Result<String, ConfigError> {
        let hex = hex.trim().trim_start_matches("sha256:").to_ascii_lowercase();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(hex)
        } else {
            Err(invalid(format!("holds {hex:?}, which is not a 64-digit hex sha256")))
        }
    };
    let spec = spec.trim();
    if !spec.contains('=') {
        return match names {
            [one] => Ok(BTreeMap::from([((*one).to_string(), check_hex(spec)?)])),
            _ => Err(invalid(format!(
                "is one digest but the service has {} models ({}); give `name=digest` pairs separated by commas",
                names.len(),
                names.join(", ")
            ))),
        };
    }
    let mut expected = BTreeMap::new();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, hex) =
            pair.split_once('=').ok_or_else(|| invalid(format!("entry {pair:?} is not `name=digest`")))?;
        if !names.contains(&name.trim()) {
            return Err(invalid(format!(
                "names model {:?}, which this service does not have (it has {})",
                name.trim(),
                names.join(", ")
            )));
        }
        expected.insert(name.trim().to_string(), check_hex(hex)?);
    }
    Ok(expected)
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

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn one_digest_needs_one_model() {
        assert_eq!(parse_expected(A, &["iris"]).expect("one model")["iris"], A);
        assert_eq!(
            parse_expected(&format!("sha256:{}", A.to_uppercase()), &["iris"]).expect("prefixed, upper case")["iris"],
            A
        );
        let err = parse_expected(A, &["scaler", "scorer"]).expect_err("two models").to_string();
        assert!(err.contains("2 models (scaler, scorer)") && err.contains("name=digest"), "{err}");
    }

    #[test]
    fn pairs_name_known_models() {
        let got = parse_expected(&format!("scaler={A}, scorer={A}"), &["scaler", "scorer"]).expect("pairs");
        assert_eq!(got.len(), 2);
        let err = parse_expected(&format!("other={A}"), &["scaler"]).expect_err("unknown").to_string();
        assert!(err.contains("\"other\"") && err.contains("scaler"), "{err}");
        let err = parse_expected("scaler=abc", &["scaler"]).expect_err("short").to_string();
        assert!(err.contains("not a 64-digit hex sha256"), "{err}");
        let err = parse_expected(&format!("scaler={A},junk"), &["scaler"]).expect_err("junk").to_string();
        assert!(err.contains("\"junk\""), "{err}");
    }
}
