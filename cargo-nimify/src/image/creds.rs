//! Registry credentials stored by `docker login` / `podman login`, found the way docker finds
//! them: in each auth file (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//! `~/.config/containers/auth.json`, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`),
//! a `credHelpers` entry for the registry, then the `credsStore` helper, then the base64
//! `auths` entry. Helpers are the `docker-credential-<name>` programs on PATH: `get` with the
//! registry on stdin, `{"Username", "Secret"}` on stdout.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::Value;

use crate::CliError;

/// `(user, password)`.
pub type Creds = (String, String);

/// The auth files, in the order they are read.
fn auth_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    files.extend(std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from));
    files.extend(std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")));
    let home = dirs::home_dir();
    files.extend(home.as_ref().map(|h| h.join(".config/containers/auth.json")));
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => files.push(PathBuf::from(d).join("config.json")),
        None => files.extend(home.map(|h| h.join(".docker/config.json"))),
    }
    files
}

/// The stored credentials for `registry` (`host[:port]`), if any file or helper has them.
pub fn stored(registry: &str) -> Result<Option<Creds>, CliError> {
    for file in auth_files() {
        let Ok(bytes) = std::fs::read(&file) else { continue };
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            CliError::with_help(
                format!("registry auth file {} is not valid JSON: {e}", file.display()),
                "fix or remove it, or pass --creds USER:PASSWORD",
            )
        })?;
        // Docker Hub's credentials are stored under its old index name.
        let names: &[&str] = if registry == "registry-1.docker.io" {
            &["index.docker.io", "docker.io", "registry-1.docker.io"]
        } else {
            &[registry]
        };
        if let Some((name, helper)) = names.iter().find_map(|n| Some((*n, doc["credHelpers"][*n].as_str()?))) {
            return helper_get(helper, name, &file);
        }
        if let Some(found) = names.iter().find_map(|n| from_auths(&doc, n)) {
            return Ok(Some(found));
        }
        if let Some(helper) = doc["credsStore"].as_str().filter(|h| !h.is_empty())
            && let Some(found) = helper_get(helper, registry, &file)?
        {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// `auths` keys are `host[:port]`, sometimes with a scheme and a path (`https://index.docker.io/v1/`).
fn from_auths(doc: &Value, registry: &str) -> Option<Creds> {
    let auths = doc["auths"].as_object()?;
    let entry = auths.iter().find(|(key, _)| {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        host.split('/').next() == Some(registry)
    })?;
    let encoded = entry.1["auth"].as_str().filter(|a| !a.is_empty())?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).ok()?).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Asks `docker-credential-<helper>` for `registry`'s credentials; "not found" is `None`.
fn helper_get(helper: &str, registry: &str, file: &Path) -> Result<Option<Creds>, CliError> {
    let program = format!("docker-credential-{helper}");
    let named = || format!("{program} (named in {})", file.display());
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CliError::with_help(
                format!("cannot run the credential helper {}: {e}", named()),
                format!("install {program}, remove it from {}, or pass --creds USER:PASSWORD", file.display()),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is reported from its output below.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| CliError::msg(format!("{}: {e}", named())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The helpers' own wording for "nothing stored for this registry".
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let said = format!("{} {}", stdout.trim(), String::from_utf8_lossy(&out.stderr).trim());
        return Err(CliError::with_help(
            format!("the credential helper {} failed for {registry} ({}): {}", named(), out.status, said.trim()),
            format!("check it with `echo {registry} | {program} get`, or pass --creds USER:PASSWORD"),
        ));
    }
    let doc: Value = serde_json::from_str(&stdout).map_err(|e| {
        CliError::msg(format!("the credential helper {} answered something that is not JSON: {e}", named()))
    })?;
    let (Some(user), Some(secret)) = (doc["Username"].as_str(), doc["Secret"].as_str()) else {
        return Err(CliError::msg(format!(
            "the credential helper {} answered without Username and Secret for {registry}",
            named()
        )));
    };
    if user == "<token>" {
        return Err(CliError::with_help(
            format!(
                "the credential helper {} holds an identity token for {registry}, which nimify cannot use",
                named()
            ),
            "log in with a user name and password or access token, or pass --creds USER:TOKEN",
        ));
    }
    Ok(Some((user.to_string(), secret.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_keys_match_with_or_without_scheme_and_path() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:p:w");
        let doc = serde_json::json!({"auths": {
            "https://reg.example:5000/v1/": {"auth": encoded},
            "other.example": {"auth": ""},
        }});
        assert_eq!(from_auths(&doc, "reg.example:5000"), Some(("u".into(), "p:w".into())));
        assert_eq!(from_auths(&doc, "reg.example"), None, "the port is part of the name");
        assert_eq!(from_auths(&doc, "other.example"), None, "an empty auth is a helper's placeholder");
    }
}
