//! Daemonless, reproducible OCI images of a service, written by our own code: one layer each for
//! the runtime libraries (or a given base image), ONNX Runtime, the binary with its assets, and
//! the model files, so a weights-only change touches only the model layer.
//!
//! Image filesystem:
//!
//! ```text
//! /lib/..., /lib64/ld-linux-...     libraries ldd lists for the binary and ONNX Runtime (for
//!                                   another platform: read from ELF headers, taken from its
//!                                   cross sysroot)
//! /etc/passwd, /etc/group           root and nonroot (65532)
//! /opt/nimify/lib/                  libonnxruntime.so.1.32.0 (ORT_DYLIB_PATH)
//! /opt/nimify/bin/<bin>             the service (entrypoint; `healthcheck` subcommand)
//! /opt/nimify/assets/               declared assets (NIMIFY_ASSET_DIR)
//! /opt/nimify/models/               model files and external data (NIMIFY_MODEL_DIR)
//! ```
//!
//! An image for several platforms (`--platform linux/amd64,linux/arm64`) is one such image per
//! platform, sharing the blobs they have in common (the model layer), and an OCI image index
//! naming each with its platform.

mod creds;
pub mod elf;
pub mod layer;
pub mod libs;
pub mod oci;
pub mod output;
pub mod platform;
pub mod registry;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;

use layer::Layer;
use nimify_model::contract::ModelDigests;
use oci::{BaseImage, ImageLayer, RunConfig};
use platform::Platform;
use store::{Blob, BlobStore};

use crate::CliError;

/// Everything under this directory is ours.
pub const ROOT: &str = "/opt/nimify";
/// The non-root user (and group) the service runs as, distroless' `nonroot`.
pub const USER: u32 = 65532;

/// A model file to pack.
#[derive(Debug, Clone)]
pub struct ModelFile {
    /// Served name.
    pub name: String,
    /// Host path.
    pub path: PathBuf,
    /// sha256 hex of the file.
    pub sha256: String,
    /// External-data files, relative to the model's directory.
    pub external: Vec<String>,
}

/// A model repository to pack: the configuration files and the served versions' directories.
#[derive(Debug, Clone)]
pub struct RepositoryFiles {
    /// Each version served: `name/version`, its model file on the host, sha256 and size.
    pub versions: Vec<RepositoryVersion>,
    /// (path inside the repository, host path) of every file and directory to pack.
    pub entries: Vec<(String, PathBuf)>,
}

/// One served version of a repository model.
#[derive(Debug, Clone)]
pub struct RepositoryVersion {
    /// `name/version`.
    pub id: String,
    /// Path of its model file inside the repository.
    pub file: String,
    /// sha256 hex of the model file.
    pub sha256: String,
    /// Bytes of its directory.
    pub size: u64,
}

/// Where a shipped model repository lands (`NIMIFY_MODEL_REPOSITORY`).
pub const REPOSITORY: &str = "/opt/nimify/repository";

/// What goes into the image.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The platform the binary and the libraries are for.
    pub platform: &'static Platform,
    /// Binary name.
    pub bin_name: String,
    /// Host path of the binary.
    pub bin_path: PathBuf,
    /// Arguments after the binary in the entrypoint (zero-code images: `nimify serve MODEL`).
    pub entry_args: Vec<String>,
    /// Model files.
    pub models: Vec<ModelFile>,
    /// Assets: (path relative to the asset directory, host path of a file or directory).
    pub assets: Vec<(String, PathBuf)>,
    /// ONNX Runtime library files.
    pub ort: Vec<PathBuf>,
    /// Base image reference, or `None` for the host's libraries.
    pub base: Option<String>,
    /// Labels (the base's, then ours on top).
    pub labels: BTreeMap<String, String>,
    /// Timestamp for every file and the config.
    pub epoch: u64,
    /// Exposed port.
    pub port: u16,
    /// Exposed gRPC port.
    pub grpc_port: u16,
    /// More `KEY=value` environment for the server (a zero-code image's `NIMIFY_REFERENCE`).
    pub env: Vec<String>,
    /// A model repository shipped beside (or instead of) the models, in its own layer.
    pub repository: Option<RepositoryFiles>,
}

impl Plan {
    /// The models' digests, for `NIMIFY_MODEL_SHA256` and the `io.nimify.model.sha256` label.
    pub fn model_digests(&self) -> ModelDigests {
        ModelDigests::new(self.models.iter().map(|m| (m.name.as_str(), m.sha256.as_str())))
    }

    /// The model names, comma-separated (a label).
    pub fn model_names(&self) -> String {
        self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(",")
    }

    fn ort_path(&self) -> String {
        let name =
            self.ort.first().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{ROOT}/lib/{name}")
    }
}

/// The image of one platform: its blobs in the staging store.
pub struct Assembled {
    /// Its platform.
    pub platform: &'static Platform,
    /// Layers in order.
    pub layers: Vec<ImageLayer>,
    /// Config blob.
    pub config: Blob,
    /// Manifest blob.
    pub manifest: Blob,
    /// The base image, when one was given.
    pub base: Option<BaseImage>,
    /// Timestamp of every file, the config and archive entries.
    pub epoch: u64,
}

impl Assembled {
    /// Every blob: the layers, then the config and the manifest.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.layers.iter().map(|l| &l.blob).chain([&self.config, &self.manifest])
    }
}

/// A built image, ready to be written to any output: one platform's, or several and the index
/// that names them.
pub struct Image {
    /// The staging store holding every blob.
    pub store: BlobStore,
    /// Each platform's image, in the order asked for.
    pub platforms: Vec<Assembled>,
    /// The image index, when there is more than one platform.
    pub index: Option<Blob>,
    /// Timestamp of archive entries.
    pub epoch: u64,
}

impl Image {
    /// Wraps the images built into `store` (at least one); several get an index.
    pub fn new(store: BlobStore, platforms: Vec<Assembled>) -> Result<Self, CliError> {
        if platforms.is_empty() {
            return Err(CliError::msg("an image needs at least one platform"));
        }
        let epoch = platforms.first().map_or(0, |a| a.epoch);
        let index = if platforms.len() > 1 {
            let entries: Vec<(&Blob, &Platform)> = platforms.iter().map(|a| (&a.manifest, a.platform)).collect();
            Some(store.bytes(&oci::index_json(&entries))?)
        } else {
            None
        };
        Ok(Self { store, platforms, index, epoch })
    }

    /// What a tag names: the index, or the one manifest; with its media type.
    pub fn top(&self) -> (&Blob, &'static str) {
        match &self.index {
            Some(index) => (index, oci::media::INDEX),
            None => (&self.platforms[0].manifest, oci::media::MANIFEST),
        }
    }

    /// Every blob once: each platform's layers, config and manifest, then the index.
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = std::collections::BTreeSet::new();
        self.platforms
            .iter()
            .flat_map(Assembled::blobs)
            .chain(self.index.as_ref())
            .filter(|b| seen.insert(b.digest.clone()))
            .collect()
    }
}

/// Layers the platforms of one image have in common, packed once (the models: reading and
/// hashing gigabytes of weights once per platform would be waste).
#[derive(Default)]
pub struct Shared {
    model: Option<ImageLayer>,
    repository: Option<ImageLayer>,
}

/// Builds every layer, the config and the manifest of one platform's image into `store`, on
/// `base` (loaded for this platform, see [`oci::load_base`]) or on libraries of its own.
pub fn assemble(
    plan: &Plan,
    store: &BlobStore,
    base: Option<BaseImage>,
    shared: &mut Shared,
    status: &dyn Fn(&str, &str),
) -> Result<Assembled, CliError> {
    let mut layers: Vec<ImageLayer> = base.as_ref().map(|b| b.layers.clone()).unwrap_or_default();
    let pack = |role: &'static str, created_by: String, content: Layer| -> Result<ImageLayer, CliError> {
        let (blob, reused) = content.write(store, plan.epoch)?;
        status(
            if reused { "Reused" } else { "Packed" },
            &format!(
                "{role} layer {} ({} compressed, {} uncompressed)",
                &blob.digest[..19],
                human_size(blob.size),
                human_size(blob.uncompressed_size.unwrap_or(0))
            ),
        );
        Ok(ImageLayer { role, media_type: oci::media::LAYER_GZIP.into(), blob, created_by })
    };
    let mut objects = vec![plan.bin_path.as_path()];
    objects.extend(plan.ort.iter().map(PathBuf::as_path));
    if base.is_none() && plan.platform.is_host() {
        check_machine(plan.platform, &objects)?;
        layers.push(pack(
            "libraries",
            "nimify: shared libraries from the build host".into(),
            libraries_layer(&libs::collect(&objects)?)?,
        )?);
    } else if base.is_none() {
        layers.push(pack(
            "libraries",
            format!("nimify: shared libraries for {} from the cross sysroot", plan.platform),
            libraries_layer(&libs::foreign(plan.platform, &objects)?)?,
        )?);
    } else {
        check_machine(plan.platform, &objects)?;
    }
    let mut ort = Layer::default();
    for lib in &plan.ort {
        ort.file(&format!("{ROOT}/lib/{}", file_name(lib)), lib)?;
    }
    layers.push(pack("onnxruntime", format!("nimify: ONNX Runtime {}", nimify::__private::ortlib::ORT_VERSION), ort)?);
    let mut app = Layer::default();
    app.file(&format!("{ROOT}/bin/{}", plan.bin_name), &plan.bin_path)?;
    for (relative, host) in &plan.assets {
        let at = format!("{ROOT}/assets/{relative}");
        if host.is_dir() { app.tree(&at, host)? } else { app.file(&at, host)? }
    }
    layers.push(pack("app", format!("nimify: {} and its assets", plan.bin_name), app)?);
    if let Some(model) = &shared.model {
        status("Shared", &format!("model layer {} with the platforms before", &model.blob.digest[..19]));
        layers.push(model.clone());
    } else if !plan.models.is_empty() {
        let mut model = Layer::default();
        for m in &plan.models {
            model.file(&format!("{ROOT}/models/{}", file_name(&m.path)), &m.path)?;
            let dir = m.path.parent().unwrap_or(std::path::Path::new("."));
            for ext in &m.external {
                model.file(&format!("{ROOT}/models/{ext}"), &dir.join(ext))?;
            }
        }
        layers.push(pack("model", format!("nimify: model {}", plan.model_names()), model)?);
        shared.model = layers.last().cloned();
    }
    if let Some(repository) = &plan.repository {
        if let Some(layer) = &shared.repository {
            status("Shared", &format!("repository layer {} with the platforms before", &layer.blob.digest[..19]));
            layers.push(layer.clone());
        } else {
            let mut layer = Layer::default();
            for (relative, host) in &repository.entries {
                let at = format!("{REPOSITORY}/{relative}");
                if host.is_dir() { layer.tree(&at, host)? } else { layer.file(&at, host)? }
            }
            let ids: Vec<&str> = repository.versions.iter().map(|v| v.id.as_str()).collect();
            layers.push(pack("repository", format!("nimify: model repository {}", ids.join(",")), layer)?);
            shared.repository = layers.last().cloned();
        }
    }
    let run = run_config(plan, base.as_ref());
    let history = base.as_ref().map(|b| b.history.clone()).unwrap_or_default();
    let config = store.bytes(&oci::config_json(&run, &layers, &history))?;
    let manifest = store.bytes(&oci::manifest_json(&config, &layers))?;
    Ok(Assembled { platform: plan.platform, layers, config, manifest, base, epoch: plan.epoch })
}

/// Refuses a binary or library built for another machine than `platform` (a stray
/// `ORT_DYLIB_PATH`, a `--target` build packed as the host's): it could never start there.
pub fn check_machine(platform: &Platform, objects: &[&std::path::Path]) -> Result<(), CliError> {
    for object in objects {
        let info = elf::read(object).map_err(|e| CliError::msg(format!("cannot pack {}: {e}", object.display())))?;
        if info.machine != platform.machine {
            let what = platform::PLATFORMS.iter().find(|p| p.machine == info.machine);
            return Err(CliError::msg(format!(
                "{} is built for {}, not {platform}; an image for {platform} needs its {platform} build",
                object.display(),
                what.map_or_else(|| format!("ELF machine {}", info.machine), ToString::to_string),
            )));
        }
    }
    Ok(())
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The libraries plus the minimal system files a non-root service needs.
fn libraries_layer(libs: &BTreeMap<String, PathBuf>) -> Result<Layer, CliError> {
    let mut layer = Layer::default();
    layer.bytes(
        "/etc/passwd",
        format!("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{USER}:{USER}:nonroot:/home/nonroot:/sbin/nologin\n"),
    )?;
    layer.bytes("/etc/group", format!("root:x:0:\nnonroot:x:{USER}:\n"))?;
    layer.dir("/tmp", 0o1777)?;
    layer.dir("/home/nonroot", 0o755)?;
    for (at, host) in libs {
        layer.file(at, host)?;
    }
    Ok(layer)
}

fn run_config(plan: &Plan, base: Option<&BaseImage>) -> RunConfig {
    let ours = [
        "PATH",
        "ORT_DYLIB_PATH",
        "NIMIFY_MODEL_DIR",
        "NIMIFY_MODEL_SHA256",
        "NIMIFY_ASSET_DIR",
        "NIMIFY_MODEL_REPOSITORY",
    ];
    let base_env: Vec<String> = base.map(|b| b.env.clone()).unwrap_or_default();
    let base_path = base_env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let key = |e: &str| e.split('=').next().map(str::to_string);
    let mut env: Vec<String> = base_env
        .iter()
        .filter(|e| !ours.iter().any(|k| key(e).as_deref() == Some(k)) && !plan.env.iter().any(|p| key(p) == key(e)))
        .cloned()
        .collect();
    env.extend([
        format!("PATH={ROOT}/bin:{base_path}"),
        format!("ORT_DYLIB_PATH={}", plan.ort_path()),
        format!("NIMIFY_MODEL_DIR={ROOT}/models"),
    ]);
    // An image of a repository alone has no model files to check.
    if !plan.models.is_empty() {
        env.push(format!("NIMIFY_MODEL_SHA256={}", plan.model_digests()));
    }
    env.push(format!("NIMIFY_ASSET_DIR={ROOT}/assets"));
    if plan.repository.is_some() {
        env.push(format!("NIMIFY_MODEL_REPOSITORY={REPOSITORY}"));
    }
    env.extend(plan.env.iter().cloned());
    RunConfig {
        architecture: plan.platform.architecture.into(),
        variant: plan.platform.variant.map(String::from),
        entrypoint: std::iter::once(format!("{ROOT}/bin/{}", plan.bin_name))
            .chain(plan.entry_args.iter().cloned())
            .collect(),
        env,
        labels: plan.labels.clone(),
        user: format!("{USER}:{USER}"),
        port: plan.port,
        grpc_port: plan.grpc_port,
        working_dir: "/".into(),
        created: oci::rfc3339(plan.epoch),
    }
}

/// `12.3 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(blob: &Blob) -> Vec<String> {
        layer::tests::entries(blob).into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn layers_hold_each_part_and_external_data_sits_beside_its_model() {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models");
        let dir = tempfile::tempdir().expect("tempdir");
        let fake_ort = dir.path().join("libonnxruntime.so.1.32.0");
        // Any small ELF object of this machine stands in for the library.
        std::fs::copy("/bin/true", &fake_ort).expect("ort");
        let plan = Plan {
            platform: Platform::host().expect("host"),
            bin_name: "svc".into(),
            bin_path: std::env::current_exe().expect("exe"),
            entry_args: Vec::new(),
            models: vec![ModelFile {
                name: "external".into(),
                path: models.join("external.onnx"),
                sha256: "ab".repeat(32),
                external: vec!["external.weights".into()],
            }],
            assets: vec![("labels/names.txt".into(), models.join("make_models.py"))],
            ort: vec![fake_ort],
            base: None,
            labels: BTreeMap::from([("a".to_string(), "b".to_string())]),
            epoch: 0,
            port: 8000,
            grpc_port: 8001,
            env: Vec::new(),
            repository: None,
        };
        let store = BlobStore::create(dir.path().join("store")).expect("store");
        let built = assemble(&plan, &store, None, &mut Shared::default(), &|_, _| ()).expect("assemble");
        let roles: Vec<&str> = built.layers.iter().map(|l| l.role).collect();
        assert_eq!(roles, ["libraries", "onnxruntime", "app", "model"]);
        let libs = entries(&built.layers[0].blob);
        assert!(libs.contains(&"etc/passwd".to_string()) && libs.iter().any(|p| p.contains("libc.so")), "{libs:?}");
        assert!(entries(&built.layers[1].blob).contains(&"opt/nimify/lib/libonnxruntime.so.1.32.0".to_string()));
        let app = entries(&built.layers[2].blob);
        assert!(
            app.contains(&"opt/nimify/bin/svc".to_string())
                && app.contains(&"opt/nimify/assets/labels/names.txt".to_string()),
            "{app:?}"
        );
        assert_eq!(
            entries(&built.layers[3].blob),
            [
                "opt/",
                "opt/nimify/",
                "opt/nimify/models/",
                "opt/nimify/models/external.onnx",
                "opt/nimify/models/external.weights"
            ]
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&built.config.path).expect("config")).expect("json");
        assert_eq!(config["config"]["Env"][3], format!("NIMIFY_MODEL_SHA256={}", "ab".repeat(32)));
        assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(4));
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&built.manifest.path).expect("manifest")).expect("json");
        assert_eq!(manifest["config"]["digest"], built.config.digest.as_str());
        assert_eq!(manifest["layers"][3]["digest"], built.layers[3].blob.digest.as_str());
    }
}
