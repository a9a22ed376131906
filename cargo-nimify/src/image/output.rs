//! Where an image goes, named like skopeo's transports: `oci:DIR[:TAG]` (an OCI image layout),
//! `oci-archive:FILE[:TAG]`, `docker-archive:FILE` (for `docker load` / `podman load`) or
//! `docker://REGISTRY/NAME:TAG` (pushed, see [`super::registry`]). Files are written under a
//! temporary name and renamed into place, so a failure leaves no half-written output.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::Image;
use super::oci::{self, REF_NAME};
use super::registry::RegistryRef;
use super::store::place;
use crate::{CliError, IoContext};

/// A parsed `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout directory.
    Oci {
        /// The directory.
        dir: PathBuf,
        /// Tag in the index.
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        /// The file.
        file: PathBuf,
        /// Tag in the index.
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive {
        /// The file.
        file: PathBuf,
    },
    /// A registry push.
    Registry(RegistryRef),
}

impl Output {
    /// Parses a transport reference; `default_tag` fills in a missing tag.
    pub fn parse(s: &str, default_tag: &str) -> Result<Self, CliError> {
        let tag = |t: Option<String>| Some(t.unwrap_or_else(|| default_tag.to_string()));
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, t) = oci::split_tag(rest);
            Ok(Self::Oci { dir, tag: tag(t) })
        } else if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, t) = oci::split_tag(rest);
            Ok(Self::OciArchive { file, tag: tag(t) })
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            Ok(Self::DockerArchive { file: PathBuf::from(rest) })
        } else if let Some(rest) = s.strip_prefix("docker://") {
            Ok(Self::Registry(RegistryRef::parse(rest, default_tag)?))
        } else {
            Err(CliError::msg(format!(
                "--output {s:?} names no known transport; use oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or docker://REGISTRY/NAME:TAG"
            )))
        }
    }

    /// The reference as skopeo would take it.
    pub fn reference(&self) -> String {
        let with_tag = |p: &Path, t: &Option<String>| match t {
            Some(t) => format!("{}:{t}", p.display()),
            None => p.display().to_string(),
        };
        match self {
            Self::Oci { dir, tag } => format!("oci:{}", with_tag(dir, tag)),
            Self::OciArchive { file, tag } => format!("oci-archive:{}", with_tag(file, tag)),
            Self::DockerArchive { file } => format!("docker-archive:{}", file.display()),
            Self::Registry(r) => format!("docker://{}", r.display()),
        }
    }
}

/// Writes (or adds to) an OCI image layout directory.
pub fn write_oci_dir(image: &Image, dir: &Path, tag: Option<&str>) -> Result<(), CliError> {
    let fail = |e: std::io::Error, p: &Path| CliError::io("write", p)(e);
    if dir.exists() {
        if !dir.join("oci-layout").is_file() {
            let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !empty {
                return Err(CliError::msg(format!(
                    "{} exists and is not an OCI image layout; pick another directory or remove it",
                    dir.display()
                )));
            }
            std::fs::remove_dir(dir).map_err(|e| fail(e, dir))?;
        } else {
            return merge_into_layout(image, dir, tag);
        }
    }
    let temp = temp_sibling(dir);
    let _ = std::fs::remove_dir_all(&temp);
    let result = (|| {
        std::fs::create_dir_all(temp.join("blobs/sha256")).map_err(|e| fail(e, &temp))?;
        for blob in image.blobs() {
            place(&blob.path, &temp.join("blobs/sha256").join(blob.hex()))?;
        }
        std::fs::write(temp.join("oci-layout"), layout_marker()).map_err(|e| fail(e, &temp))?;
        std::fs::write(temp.join("index.json"), index(&[top_descriptor(image, tag)])).map_err(|e| fail(e, &temp))?;
        std::fs::rename(&temp, dir).map_err(|e| fail(e, dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result
}

/// Adds the blobs, then swaps in an index where `tag` points at the new manifest.
fn merge_into_layout(image: &Image, dir: &Path, tag: Option<&str>) -> Result<(), CliError> {
    for blob in image.blobs() {
        place(&blob.path, &dir.join("blobs/sha256").join(blob.hex()))?;
    }
    let old = oci::read_layout_json(&dir.join("index.json")).ok_or_else(|| {
        CliError::msg(format!("{} has no readable index.json; remove the directory and build again", dir.display()))
    })?;
    let mut manifests: Vec<Value> = old["manifests"].as_array().cloned().unwrap_or_default();
    let top = image.top().0;
    manifests.retain(|m| tag.is_none_or(|t| m["annotations"][REF_NAME] != t) && m["digest"] != top.digest.as_str());
    manifests.push(top_descriptor(image, tag));
    write_atomic(&dir.join("index.json"), &index(&manifests))
}

/// Writes a tar of an OCI image layout.
pub fn write_oci_archive(image: &Image, file: &Path, tag: Option<&str>) -> Result<(), CliError> {
    write_tar(file, image.epoch, |tar| {
        tar.bytes("oci-layout", &layout_marker())?;
        tar.bytes("index.json", &index(&[top_descriptor(image, tag)]))?;
        for blob in image.blobs() {
            tar.file(&format!("blobs/sha256/{}", blob.hex()), &blob.path)?;
        }
        Ok(())
    })
}

/// Writes a `docker save`-style tarball (`manifest.json`, config, gzip-compressed layers) that
/// `docker load` tags `repo_tag`. The format holds one platform's image.
pub fn write_docker_archive(image: &Image, file: &Path, repo_tag: &str) -> Result<(), CliError> {
    let [image] = image.platforms.as_slice() else {
        return Err(multi_platform_docker_archive());
    };
    let layer_names: Vec<String> = image.layers.iter().map(|l| format!("{}.tar.gz", l.blob.hex())).collect();
    let config_name = format!("{}.json", image.config.hex());
    let manifest = json!([{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]).to_string();
    write_tar(file, image.epoch, |tar| {
        tar.bytes("manifest.json", manifest.as_bytes())?;
        tar.file(&config_name, &image.config.path)?;
        for (layer, name) in image.layers.iter().zip(&layer_names) {
            tar.file(name, &layer.blob.path)?;
        }
        Ok(())
    })
}

/// Why a multi-platform image cannot be a `docker-archive:`.
pub fn multi_platform_docker_archive() -> CliError {
    CliError::with_help(
        "a docker-archive holds one platform's image, and --platform names several",
        "write the multi-platform image to oci:DIR, oci-archive:FILE or docker://REGISTRY/NAME:TAG, or build one docker-archive per platform",
    )
}

/// The index entry of what the tag names.
fn top_descriptor(image: &Image, tag: Option<&str>) -> Value {
    let (blob, media_type) = image.top();
    oci::descriptor(media_type, blob, tag)
}

fn layout_marker() -> Vec<u8> {
    br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()
}

fn index(manifests: &[Value]) -> Vec<u8> {
    json!({"schemaVersion": 2, "mediaType": oci::media::INDEX, "manifests": manifests}).to_string().into_bytes()
}

/// `.<name>.tmp-<pid>` beside `path`; what interrupted runs left under such names goes first.
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let prefix = format!(".{name}.tmp-");
    if let Some(parent) = path.parent() {
        super::store::sweep_abandoned(if parent.as_os_str().is_empty() { Path::new(".") } else { parent }, &prefix);
    }
    path.with_file_name(format!("{prefix}{}", std::process::id()))
}

/// Writes `path` whole or not at all (a temporary sibling renamed into place).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let temp = temp_sibling(path);
    std::fs::write(&temp, bytes).and_then(|()| std::fs::rename(&temp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        CliError::io("write", path)(e)
    })
}

/// A tar being written with normalised headers.
struct TarOut {
    tar: tar::Builder<File>,
    epoch: u64,
    path: PathBuf,
}

impl TarOut {
    fn header(&self, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(self.epoch);
        h.set_size(size);
        h
    }

    fn bytes(&mut self, name: &str, bytes: &[u8]) -> Result<(), CliError> {
        let mut h = self.header(bytes.len() as u64);
        self.tar.append_data(&mut h, name, bytes).at("write", &self.path)
    }

    fn file(&mut self, name: &str, from: &Path) -> Result<(), CliError> {
        let f = File::open(from).at("read", from)?;
        let len = f.metadata().at("read", from)?.len();
        let mut h = self.header(len);
        self.tar.append_data(&mut h, name, std::io::Read::take(f, len)).at("write", &self.path)
    }
}

fn write_tar(file: &Path, epoch: u64, fill: impl FnOnce(&mut TarOut) -> Result<(), CliError>) -> Result<(), CliError> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).at("create", parent)?;
    }
    let temp = temp_sibling(file);
    let out = File::create(&temp).at("create", &temp)?;
    let mut tar = TarOut { tar: tar::Builder::new(out), epoch, path: file.to_path_buf() };
    let result = fill(&mut tar).and_then(|()| {
        let mut f = tar.tar.into_inner().at("write", file)?;
        f.flush().and_then(|()| f.sync_all()).at("write", file)?;
        std::fs::rename(&temp, file).at("write", file)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_print_back() {
        let cases = [
            ("oci:out/img", "oci:out/img:0.1.0"),
            ("oci:out/img:v2", "oci:out/img:v2"),
            ("oci-archive:img.tar", "oci-archive:img.tar:0.1.0"),
            ("docker-archive:img.tar", "docker-archive:img.tar"),
            ("docker://127.0.0.1:5000/acme/iris", "docker://127.0.0.1:5000/acme/iris:0.1.0"),
            ("docker://127.0.0.1:5000/iris:v3", "docker://127.0.0.1:5000/iris:v3"),
        ];
        for (given, printed) in cases {
            assert_eq!(Output::parse(given, "0.1.0").expect(given).reference(), printed);
        }
        let err = Output::parse("containers-storage:x", "1").expect_err("unknown").to_string();
        assert!(err.contains("oci:DIR[:TAG]"), "{err}");
    }
}
