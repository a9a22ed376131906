//! `cargo nimify image`: builds the service (unless `--no-build`), asks the binary which models it
//! serves, and writes a reproducible OCI image (see [`crate::image`]) to a layout, an archive or a
//! registry. The result goes to stdout (`--format json`: `{"reference", "digest"}`) and to
//! `target/nimify/<package>/image.json`, which `chart` and `deploy` read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;
use nimify_model::contract::{
    BaseRecord, ImageRecord, LayerRecord, ModelRecord, PlannedModel, PlatformRecord, SCHEMA_VERSION, ServiceManifest,
};
use serde_json::json;

use crate::image::output::{self, Output};
use crate::image::platform::Platform;
use crate::image::registry::{self, PushOptions};
use crate::image::store::BlobStore;
use crate::image::{self as img, Image, ModelFile, Plan};
use crate::project::{Project, ProjectArgs};
use crate::{CliError, IoContext, Out};

/// `image` arguments.
#[derive(Debug, Clone, Args)]
pub struct ImageArgs {
    /// Which package and binary.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Use the binary already built with --profile (and --target) instead of running cargo build.
    #[arg(long)]
    pub no_build: bool,
    /// Where the image goes: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or
    /// docker://REGISTRY/NAME:TAG [default: docker://<registry>/<name>:<tag> when a registry is
    /// set, else oci:target/nimify/<package>/oci:<tag>].
    #[arg(long, short = 'o', value_name = "REF", env = "NIMIFY_IMAGE_OUTPUT")]
    pub output: Option<String>,
    /// Image name [default: `image` from [package.metadata.nimify], else the package name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Image tag [default: `tag` from the metadata, else the package version].
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Registry for the default output, e.g. ghcr.io/acme [default: `registry` from the metadata].
    #[arg(long, value_name = "HOST[/PATH]", env = "NIMIFY_REGISTRY")]
    pub registry: Option<String>,
    /// Base image (oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://REGISTRY/NAME[:TAG|@DIGEST])
    /// instead of the host's libraries.
    #[arg(long, value_name = "REF")]
    pub base: Option<String>,
    /// Registry credentials [default: the podman/docker auth files].
    #[arg(long, value_name = "USER:PASSWORD", env = "NIMIFY_REGISTRY_CREDS", hide_env_values = true)]
    pub creds: Option<String>,
    /// Talk plain HTTP to the registry (loopback registries are tried over HTTP after HTTPS anyway).
    #[arg(long)]
    pub insecure: bool,
    /// Trust this CA certificate (PEM) for the registry, e.g. a self-signed one; repeatable.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Build for these platforms, comma-separated (linux/amd64, linux/arm64): each is
    /// cross-compiled as needed, and several make one multi-platform image (an OCI image index)
    /// [default: this machine's, or that of --target].
    #[arg(long, value_name = "OS/ARCH[,...]", env = "NIMIFY_PLATFORM")]
    pub platform: Option<String>,
    /// With --model: a reference profile (`cargo nimify profile`) shipped in the image, so the
    /// server measures drift against it (a service crate compiles its profile in:
    /// `#[nimify(reference = "...")]`).
    #[arg(long, value_name = "PROFILE", requires = "model")]
    pub reference: Option<PathBuf>,
    /// Ship this model repository (DIR/NAME/VERSION/model.onnx) in the image, its served versions
    /// in a layer of their own, at /opt/nimify/repository (NIMIFY_MODEL_REPOSITORY, which a
    /// deployment can point at a volume instead). `--model DIR` makes an image of a repository alone.
    #[arg(long, value_name = "DIR")]
    pub model_repository: Option<PathBuf>,
    /// How cargo builds it.
    #[command(flatten)]
    pub cargo: super::build::CargoArgs,
}

/// Runs the command.
pub fn run(args: &ImageArgs, out: Out) -> Result<(), CliError> {
    let mut project = Project::load(&args.project)?;
    let platforms = platforms(args)?;
    let foreign: Vec<&'static Platform> = platforms.iter().copied().filter(|p| !p.is_host()).collect();
    if let (Some(_), Some(p)) = (&project.model, foreign.first()) {
        return Err(CliError::with_help(
            format!("a zero-code image runs this very cargo-nimify, which is built for this machine, not {p}"),
            format!(
                "run `cargo nimify image --model` on a {p} machine, or make a crate of it (`cargo nimify new`) and build that for {p}"
            ),
        ));
    }
    // Zero-code: the one model is read and hashed here, once (it may be gigabytes); its digest
    // is the default tag, `sha-` and its first 12 digits, so each model file gets its own.
    let repository_dir = match (project.model.as_deref().filter(|m| m.is_dir()), &args.model_repository) {
        (Some(_), Some(_)) => {
            return Err(CliError::with_help(
                "--model names a model repository and --model-repository another",
                "give the repository once: `--model DIR` for an image of the repository alone",
            ));
        }
        (Some(dir), None) => Some(dir.to_path_buf()),
        (None, given) => given.clone(),
    };
    let repository = repository_dir.as_deref().map(repository_files).transpose()?;
    let zero_code =
        project.model.as_deref().filter(|m| m.is_file()).map(|m| zero_code_model(m, &project.bin)).transpose()?;
    if let Some(model) = &zero_code {
        project.settings.tag.get_or_insert_with(|| format!("sha-{}", &model.sha256[..12]));
    }
    if let (Some(files), true, None) = (&repository, project.model.is_some(), &zero_code) {
        project.settings.tag.get_or_insert_with(|| format!("sha-{}", &repository_digest(files)[..12]));
    }
    match (&args.reference, &zero_code) {
        (Some(reference), Some(model)) => check_reference(reference, &model.path)?,
        (Some(_), None) => {
            return Err(CliError::with_help(
                "--reference names the profile of one model file; a repository model names its own",
                "add `reference = \"profile.json\"` to REPO/<name>/config.toml (relative to the model's directory)",
            ));
        }
        (None, _) => {}
    }
    let (name, tag, output) = naming(&project, args)?;
    if platforms.len() > 1 && matches!(output, Output::DockerArchive { .. }) {
        return Err(output::multi_platform_docker_archive());
    }
    let push = push_options(args)?;
    // Reachability and credentials first: a typo in the address or the password should not
    // cost a release build.
    if let Output::Registry(target) = &output {
        crate::term::verbose("Checking", format!("registry {} (reachable, credentials accepted)", target.registry));
        registry::check(target, &push)?;
    }
    let base_ref = args.base.clone().or_else(|| project.settings.base.clone());
    // Every cross build's tools and sysroot, before the first build starts.
    let mut cross_env = BTreeMap::new();
    for p in &foreign {
        if base_ref.is_none() {
            p.check_sysroot()?;
        }
        if !args.no_build {
            cross_env.insert(p.triple, p.check_build(project.dir())?);
        }
    }
    let ort = platforms.iter().map(|p| onnx_runtime(p)).collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(project.state_dir()).at("create", project.state_dir())?;
    crate::image::store::sweep_abandoned(&project.state_dir(), "staging-");
    let store = BlobStore::create(project.state_dir().join(format!("staging-{}", std::process::id())))?
        .with_layer_cache(project.target_dir.join("nimify/layer-cache"));
    // Each platform's base (a wrong one is refused here, not after the builds).
    let access = base_access(base_ref.as_deref(), &output, &push);
    let bases = platforms
        .iter()
        .map(|p| base_ref.as_deref().map(|r| img::oci::load_base(r, &store, &access, p)).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let mut binaries = Vec::new();
    for p in &platforms {
        let env = cross_env.get(p.triple).cloned().unwrap_or_default();
        binaries.push(binary(&project, args, p, &env, platforms.len() > 1 || !p.is_host())?);
    }
    // The models a service serves are listed by a binary this machine can run: built for it as
    // well when --platform leaves it out.
    let served = match (&project.model, platforms.iter().position(|p| p.is_host())) {
        (Some(_), _) => Vec::new(),
        (None, Some(i)) => models_of(&binaries[i], &project.bin)?,
        (None, None) => {
            crate::term::status("Listing", format!("the models of {} with a build for this machine", project.bin));
            models_of(&binary(&project, args, Platform::host()?, &[], true)?, &project.bin)?
        }
    };
    let mut built = Vec::new();
    let mut plans = Vec::new();
    let mut shared = img::Shared::default();
    for (((p, binary), ort), base) in platforms.iter().zip(binaries).zip(ort).zip(bases) {
        let parts = Parts {
            platform: p,
            binary,
            ort,
            zero_code: zero_code.clone(),
            served: served.clone(),
            repository: repository.clone(),
        };
        let mut plan = plan(&project, parts, base_ref.clone(), &name)?;
        if let Some(reference) = &args.reference {
            // Beside the declared assets, under a name of its own; the server is told where by
            // its environment, which a deployment can still replace.
            plan.assets.push((REFERENCE_ASSET.into(), reference.clone()));
            plan.env.push(format!("NIMIFY_REFERENCE={}/assets/{REFERENCE_ASSET}", img::ROOT));
        }
        let prefix = if platforms.len() > 1 { format!("{p}: ") } else { String::new() };
        let status = |verb: &str, what: &str| crate::term::status(verb, format!("{prefix}{what}"));
        built.push(img::assemble(&plan, &store, base, &mut shared, &status)?);
        plans.push(plan);
    }
    let image = Image::new(store, built)?;
    crate::term::status("Writing", output.reference());
    match &output {
        Output::Oci { dir, tag } => output::write_oci_dir(&image, dir, tag.as_deref())?,
        Output::OciArchive { file, tag } => output::write_oci_archive(&image, file, tag.as_deref())?,
        Output::DockerArchive { file } => output::write_docker_archive(&image, file, &format!("{name}:{tag}"))?,
        Output::Registry(target) => {
            registry::push(&image, target, &push, &|verb: &str, what: &str| crate::term::status(verb, what))?;
        }
    }
    let record = record(&project, &plans[0], &output, &image, &name, &tag);
    let path = project.state_dir().join("image.json");
    let json =
        record.to_json().map_err(|e| CliError::msg(format!("cannot record the image in {}: {e}", path.display())))?;
    output::write_atomic(&path, json.as_bytes())?;
    report(&record);
    out.result(&record.digest, || json!({"reference": record.reference, "digest": record.digest}));
    Ok(())
}

/// `--platform`, else the platform of `--target`, else this machine's.
fn platforms(args: &ImageArgs) -> Result<Vec<&'static Platform>, CliError> {
    match (&args.platform, &args.cargo.target) {
        (Some(_), Some(_)) => Err(CliError::with_help(
            "--platform (or NIMIFY_PLATFORM) and --target both name what to build for",
            "give --platform alone: it builds each platform with its own --target",
        )),
        (Some(list), None) => Platform::parse_list(list),
        (None, Some(triple)) => {
            let p = Platform::parse(triple).ok().filter(|p| p.triple == triple).ok_or_else(|| {
                let known: Vec<String> =
                    img::platform::PLATFORMS.iter().map(|p| format!("{p} ({})", p.triple)).collect();
                CliError::with_help(
                    format!("cannot build an image for target {triple}: images are built for {}", known.join(" and ")),
                    format!("`cargo nimify build --target {triple}` cross-compiles the binary alone; --platform takes OS/ARCH names"),
                )
            })?;
            Ok(vec![p])
        }
        (None, None) => Ok(vec![Platform::host()?]),
    }
}

/// The ONNX Runtime files for `platform`: this machine's as the runtime finds them (respecting
/// `ORT_DYLIB_PATH`), or another platform's pinned build from the cache, installed when missing.
fn onnx_runtime(platform: &Platform) -> Result<Vec<PathBuf>, CliError> {
    if platform.is_host() {
        let lib = nimify::__private::ortlib::find()?;
        let mut files = vec![lib.clone()];
        files.extend(Some(lib.with_file_name("libonnxruntime_providers_shared.so")).filter(|p| p.is_file()));
        img::check_machine(platform, &files.iter().map(PathBuf::as_path).collect::<Vec<_>>())?;
        return Ok(files);
    }
    let request = crate::ort::Install { platform: Some(platform.to_string()), ..Default::default() };
    let lib = crate::ort::install(&request)?;
    let pin = crate::ort::pins::find(&platform.to_string()).map_err(CliError::msg)?;
    Ok(pin.files.iter().map(|f| lib.with_file_name(f.name())).collect())
}

/// The service binary for `platform`: built (cross-compiled for another platform), or with
/// `--no-build` the one cargo built before; for a zero-code image, this program.
fn binary(
    project: &Project,
    args: &ImageArgs,
    platform: &Platform,
    env: &[(String, String)],
    say_platform: bool,
) -> Result<PathBuf, CliError> {
    if project.model.is_some() {
        // The image runs this very program: `cargo nimify serve` is the generic server.
        return std::env::current_exe().at("find this program's executable", "cargo-nimify");
    }
    let mut cargo = args.cargo.clone();
    if !platform.is_host() {
        cargo.target = Some(platform.triple.to_string());
    }
    if args.no_build {
        let exe = super::build::expected_executable(project, &cargo);
        if !exe.is_file() {
            let target = cargo.target.as_ref().map(|t| format!(" --target {t}")).unwrap_or_default();
            return Err(CliError::msg(format!(
                "binary {} not found; build it with `cargo nimify build --profile {}{target}` or drop --no-build",
                exe.display(),
                cargo.profile
            )));
        }
        return Ok(exe);
    }
    let on = if say_platform { format!(", {platform}") } else { String::new() };
    crate::term::status("Building", format!("{} (profile {}{on})", project.package, cargo.profile));
    super::build::build_with(project, &cargo, env)
}

/// `--creds`, `--insecure` and `--ca-cert` are for the registry pushed to: a `docker://` base on
/// that same registry gets them, a base elsewhere is read over verified HTTPS with its own stored
/// credentials, so a password, or plain HTTP, meant for one registry never reaches another.
fn base_access(base: Option<&str>, output: &Output, push: &PushOptions) -> PushOptions {
    let Some(base_host) = base.and_then(|b| b.strip_prefix("docker://")).and_then(|r| r.split('/').next()) else {
        return PushOptions::default();
    };
    if matches!(output, Output::Registry(t) if t.registry == base_host) {
        return push.clone();
    }
    if push.creds.is_some() || push.insecure || !push.ca_certs.is_empty() {
        crate::term::note(format!(
            "--creds, --insecure and --ca-cert apply to the registry pushed to, not to the base's {base_host}"
        ));
    }
    PushOptions::default()
}

/// Image name, tag and output: flags, then `[package.metadata.nimify]`, then the package's own
/// name and version; the output defaults to the registry when one is set, else a layout in target.
fn naming(project: &Project, args: &ImageArgs) -> Result<(String, String, Output), CliError> {
    let settings = &project.settings;
    let name = args.name.clone().or_else(|| settings.image.clone()).unwrap_or_else(|| project.package.clone());
    let tag = args.tag.clone().or_else(|| settings.tag.clone()).unwrap_or_else(|| project.version.clone());
    let registry = args.registry.clone().or_else(|| settings.registry.clone());
    let output = match (&args.output, &registry) {
        (Some(o), _) => Output::parse(o, &tag)?,
        (None, Some(r)) => Output::parse(&format!("docker://{}/{name}:{tag}", r.trim_end_matches('/')), &tag)?,
        (None, None) => Output::parse(&format!("oci:{}:{tag}", project.state_dir().join("oci").display()), &tag)?,
    };
    Ok((name, tag, output))
}

fn push_options(args: &ImageArgs) -> Result<PushOptions, CliError> {
    let creds = match &args.creds {
        Some(c) => Some(
            c.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .ok_or_else(|| CliError::msg("--creds must be USER:PASSWORD"))?,
        ),
        None => None,
    };
    Ok(PushOptions { insecure: args.insecure, ca_certs: args.ca_cert.clone(), creds })
}

/// A model repository, read as the server reads it: every model's configuration and the served
/// versions' signatures are checked before anything is built; each served version's directory
/// and each configuration file is packed, the rest (versions the policy does not serve, hidden
/// staging entries) is not.
fn repository_files(root: &Path) -> Result<img::RepositoryFiles, CliError> {
    use nimify::repository::layout;
    let names = layout::model_names(root).map_err(|e| CliError::msg(e.to_string()))?;
    if names.is_empty() {
        return Err(CliError::with_help(
            format!("model repository {} has no model directories", root.display()),
            "lay it out as REPO/<name>/<version>/model.onnx; `cargo nimify inspect REPO` shows what it would serve",
        ));
    }
    let config = nimify::Config::default();
    let mut versions = Vec::new();
    let mut entries = Vec::new();
    for name in names {
        let dir = layout::read_model_dir(root, &name, &config).map_err(|e| {
            CliError::with_help(e.to_string(), format!("`cargo nimify inspect {}` lists every problem", root.display()))
        })?;
        if let Some(file) = &dir.config_file {
            let base = file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            entries.push((format!("{name}/{base}"), file.clone()));
        }
        let selected = dir.selected();
        if selected.is_empty() {
            return Err(CliError::with_help(
                format!(
                    "model {name:?} of {} has no version to serve (version policy {})",
                    root.display(),
                    dir.settings.policy
                ),
                format!("add a version directory such as {}/1/{}", dir.dir.display(), dir.settings.filename),
            ));
        }
        for v in selected {
            nimify_model::read_model(&v.model).map_err(|source| CliError::Model { path: v.model.clone(), source })?;
            let sha256 = nimify_model::file_sha256(&v.model).at("hash", &v.model)?;
            let version_dir = dir.dir.join(v.version.to_string());
            let size = std::fs::read_dir(&version_dir)
                .at("list", &version_dir)?
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            let file = format!("{name}/{}/{}", v.version, dir.settings.filename);
            versions.push(img::RepositoryVersion { id: format!("{name}/{}", v.version), file, sha256, size });
            entries.push((format!("{name}/{}", v.version), version_dir));
        }
    }
    Ok(img::RepositoryFiles { versions, entries })
}

/// One digest for a repository's served versions (a zero-code image's default tag).
fn repository_digest(files: &img::RepositoryFiles) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    for v in &files.versions {
        hash.update(format!("{}={}\n", v.file, v.sha256));
    }
    format!("{:x}", hash.finalize())
}

/// The model of a zero-code image, checked and hashed, named as `serve` names it (the file stem).
fn zero_code_model(model: &Path, bin: &str) -> Result<ModelFile, CliError> {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut files = model_files(vec![PlannedModel { name: stem, path: model.to_path_buf() }], bin)?;
    files.pop().ok_or_else(|| CliError::msg(format!("no model in {}", model.display())))
}

/// Where `--reference` goes among the image's assets.
const REFERENCE_ASSET: &str = "nimify/reference.profile.json";

/// Refuses a profile that the server would refuse at start (unreadable, or made for another
/// model), before anything is built.
fn check_reference(reference: &Path, model: &Path) -> Result<(), CliError> {
    let text = std::fs::read_to_string(reference).map_err(CliError::io("read", reference))?;
    let profile = nimify_model::profile::Profile::from_json(&text)
        .map_err(|e| CliError::msg(format!("reference profile {}: {e}", reference.display())))?;
    let info =
        nimify_model::read_model(model).map_err(|source| CliError::Model { path: model.to_path_buf(), source })?;
    profile.check_against(&info.inputs, &info.outputs).map_err(|problems| {
        CliError::with_help(
            format!(
                "reference profile {} does not fit {}: {}",
                reference.display(),
                model.display(),
                problems.join("; ")
            ),
            format!("make one for this model: cargo nimify profile --model {} --data <sample>", model.display()),
        )
    })
}

/// What one platform's image is made of, found before it is planned.
struct Parts {
    platform: &'static Platform,
    /// The service binary built for it.
    binary: PathBuf,
    /// Its ONNX Runtime files.
    ort: Vec<PathBuf>,
    /// The model of a `--model` image, served by the generic server.
    zero_code: Option<ModelFile>,
    /// Otherwise, the models the service serves (checked and hashed).
    served: Vec<ModelFile>,
    /// A model repository shipped in the image.
    repository: Option<img::RepositoryFiles>,
}

/// Collects every input and fails, before anything is written, when one is missing.
fn plan(project: &Project, parts: Parts, base: Option<String>, name: &str) -> Result<Plan, CliError> {
    let Parts { platform, binary, ort, zero_code, served, repository } = parts;
    let (models, entry_args) = match zero_code {
        Some(model) => {
            let file = model.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            let serve = vec!["nimify".into(), "serve".into(), format!("{}/models/{file}", img::ROOT)];
            (vec![model], serve)
        }
        // A repository alone: `serve` finds it through NIMIFY_MODEL_REPOSITORY.
        None if project.model.is_some() => (Vec::new(), vec!["nimify".into(), "serve".into()]),
        None => (served, Vec::new()),
    };
    let assets = project
        .settings
        .assets
        .iter()
        .map(|a| {
            let relative = a.to_string_lossy().replace('\\', "/");
            if a.is_absolute() || a.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(CliError::msg(format!(
                    "asset {relative:?} in [package.metadata.nimify] must be a path inside the crate, without `..`"
                )));
            }
            let host = project.dir().join(a);
            if !host.exists() {
                return Err(CliError::msg(format!(
                    "asset {} (declared in [package.metadata.nimify] assets) not found",
                    host.display()
                )));
            }
            Ok((relative.trim_start_matches("./").to_string(), host))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| CliError::msg(format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")))?,
        Err(_) => 0,
    };
    let mut plan = Plan {
        platform,
        bin_name: project.bin.clone(),
        bin_path: binary,
        entry_args,
        models,
        assets,
        ort,
        base,
        labels: BTreeMap::new(),
        epoch,
        port: nimify::DEFAULT_PORT,
        grpc_port: nimify::DEFAULT_GRPC_PORT,
        env: Vec::new(),
        repository,
    };
    plan.labels = labels(project, &plan, name);
    Ok(plan)
}

/// A child's stderr for quoting inside our own `error:` line: one line, without its own `error: `.
fn child_error(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> =
        text.lines().map(|l| l.trim().trim_start_matches("error: ")).filter(|l| !l.is_empty()).collect();
    if lines.is_empty() { "it printed nothing".into() } else { lines.join("; ") }
}

/// Runs `<bin> manifest` to learn the models it serves, then checks and hashes each file.
fn models_of(binary: &Path, bin: &str) -> Result<Vec<ModelFile>, CliError> {
    let out = Command::new(binary)
        .arg("manifest")
        .env_remove("NIMIFY_MODEL_DIR")
        .output()
        .map_err(|e| CliError::msg(format!("cannot run {} to list its models: {e}", binary.display())))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(CliError::with_help(
            format!("`{bin} manifest` did not list its models ({})", child_error(&out.stderr)),
            format!("is `{bin}` a nimify service? its main must call `nimify::cli::run` (see `cargo nimify new`)"),
        ));
    }
    let manifest = ServiceManifest::parse(&out.stdout, bin)?;
    model_files(manifest.models, bin)
}

/// Checks and hashes each model file (and its external data).
fn model_files(planned: Vec<PlannedModel>, bin: &str) -> Result<Vec<ModelFile>, CliError> {
    let mut models = Vec::new();
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for PlannedModel { name, path } in planned {
        if !path.is_file() {
            return Err(CliError::msg(format!(
                "model file {} (model `{name}`, compiled into {bin}) not found; restore it, or rebuild after moving it",
                path.display()
            )));
        }
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(other) = files.insert(file.clone(), name.clone()) {
            return Err(CliError::msg(format!(
                "models `{other}` and `{name}` are both files named {file}; the image keeps models in one directory, so rename one"
            )));
        }
        let info =
            nimify_model::read_model(&path).map_err(|source| CliError::Model { path: path.to_path_buf(), source })?;
        let mut external: Vec<String> = info.external_data.iter().map(|x| x.location.clone()).collect();
        external.sort();
        external.dedup();
        for x in &external {
            let at = path.parent().unwrap_or(Path::new(".")).join(x);
            if !at.is_file() {
                return Err(CliError::msg(format!(
                    "external data file {} of model {} not found",
                    at.display(),
                    path.display()
                )));
            }
        }
        let sha256 = nimify_model::file_sha256(&path).at("hash", &path)?;
        models.push(ModelFile { name, path, sha256, external });
    }
    if models.is_empty() {
        return Err(CliError::msg(format!(
            "{bin} serves no model; an image needs at least one `#[nimify(model = ...)]` model"
        )));
    }
    Ok(models)
}

fn labels(project: &Project, plan: &Plan, title: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        labels.insert(k.to_string(), v);
    };
    put("org.opencontainers.image.title", title.to_string());
    put("org.opencontainers.image.version", project.version.clone());
    put("org.opencontainers.image.created", img::oci::rfc3339(plan.epoch));
    if let Some(d) = &project.description {
        put("org.opencontainers.image.description", d.clone());
    }
    if let Some(r) = &project.repository {
        put("org.opencontainers.image.source", r.clone());
    }
    if let Some(rev) = git_revision(project.dir()) {
        put("org.opencontainers.image.revision", rev);
    }
    if let Some(b) = &plan.base {
        put("org.opencontainers.image.base.name", b.clone());
    }
    put("io.nimify.version", env!("CARGO_PKG_VERSION").to_string());
    put("io.nimify.onnxruntime.version", nimify::__private::ortlib::ORT_VERSION.to_string());
    put("io.nimify.model.name", plan.model_names());
    put("io.nimify.model.sha256", plan.model_digests().to_string());
    if let Some(r) = &plan.repository {
        put(
            "io.nimify.repository",
            r.versions.iter().map(|v| format!("{}={}", v.id, v.sha256)).collect::<Vec<_>>().join(","),
        );
    }
    labels
}

fn git_revision(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

/// What `image.json` holds.
fn record(project: &Project, plan: &Plan, output: &Output, image: &Image, name: &str, tag: &str) -> ImageRecord {
    // The layers (and base) recorded are the first platform's; the others differ only in the
    // libraries, ONNX Runtime and the binary.
    let built = &image.platforms[0];
    let repository = match output {
        Output::Registry(r) => format!("{}/{}", r.registry, r.name),
        _ => name.to_string(),
    };
    let layers = built
        .layers
        .iter()
        .map(|l| LayerRecord {
            role: l.role.to_string(),
            digest: l.blob.digest.clone(),
            size: l.blob.size,
            uncompressed_size: l.blob.uncompressed_size,
        })
        .collect();
    let size: u64 = image.blobs().iter().map(|b| b.size).sum();
    let platforms = if image.index.is_some() {
        image
            .platforms
            .iter()
            .map(|a| PlatformRecord {
                platform: a.platform.to_string(),
                digest: a.manifest.digest.clone(),
                size: a.blobs().map(|b| b.size).sum(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut models: Vec<ModelRecord> = plan
        .models
        .iter()
        .map(|m| ModelRecord {
            name: m.name.clone(),
            file: m.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256: m.sha256.clone(),
            size: file_size(&m.path) + m.external.iter().map(|x| file_size(&m.path.with_file_name(x))).sum::<u64>(),
        })
        .collect();
    // A repository's served versions count as models (names `model/version`): the chart sizes
    // memory from them.
    models.extend(plan.repository.iter().flat_map(|r| &r.versions).map(|v| ModelRecord {
        name: v.id.clone(),
        file: format!("repository/{}", v.file),
        sha256: v.sha256.clone(),
        size: v.size,
    }));
    ImageRecord {
        schema_version: SCHEMA_VERSION,
        reference: output.reference(),
        digest: image.top().0.digest.clone(),
        platforms,
        repository,
        tag: tag.to_string(),
        package: project.package.clone(),
        version: project.version.clone(),
        bin: plan.bin_name.clone(),
        port: plan.port,
        grpc_port: Some(plan.grpc_port),
        user: img::USER,
        base: built.base.as_ref().map(|b| BaseRecord { reference: b.reference.clone(), digest: b.digest.clone() }),
        models,
        layers,
        size,
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The image's size next to its parts, on stderr.
fn report(record: &ImageRecord) {
    if !record.platforms.is_empty() {
        for p in &record.platforms {
            crate::term::status("Platform", format!("{:<12} {:>10} {}", p.platform, img::human_size(p.size), p.digest));
        }
        crate::term::status(
            "Finished",
            format!(
                "{} ({} platforms, {} compressed) {}",
                record.reference,
                record.platforms.len(),
                img::human_size(record.size),
                record.digest
            ),
        );
        return;
    }
    for l in &record.layers {
        crate::term::status(
            "Layer",
            format!(
                "{:<12} {:>10} compressed {:>10} on disk",
                l.role,
                img::human_size(l.size),
                img::human_size(l.uncompressed_size.unwrap_or(0))
            ),
        );
    }
    let unpacked = record.layers.iter().filter_map(|l| l.uncompressed_size).sum();
    crate::term::status(
        "Finished",
        format!(
            "{} ({} compressed, {} unpacked) {}",
            record.reference,
            img::human_size(record.size),
            img::human_size(unpacked),
            record.digest
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn project(settings: crate::project::Settings) -> Project {
        Project {
            package: "svc".into(),
            version: "1.2.3".into(),
            repository: None,
            description: None,
            manifest_path: PathBuf::from("/w/svc/Cargo.toml"),
            bin: "svc".into(),
            target_dir: PathBuf::from("/w/target"),
            settings,
            model: None,
        }
    }

    fn args(flags: &[&str]) -> ImageArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            image: ImageArgs,
        }
        Cli::try_parse_from([&["image"][..], flags].concat()).expect("flags").image
    }

    #[test]
    fn names_come_from_flags_then_metadata_then_the_package() {
        let (name, tag, output) = naming(&project(Default::default()), &args(&[])).expect("defaults");
        assert_eq!((name.as_str(), tag.as_str()), ("svc", "1.2.3"));
        assert_eq!(output.reference(), "oci:/w/target/nimify/svc/oci:1.2.3");
        let meta = crate::project::Settings {
            image: Some("acme/svc".into()),
            tag: Some("stable".into()),
            registry: Some("ghcr.io/".into()),
            ..Default::default()
        };
        let (_, _, output) = naming(&project(meta.clone()), &args(&[])).expect("metadata");
        assert_eq!(output.reference(), "docker://ghcr.io/acme/svc:stable");
        let (name, tag, output) =
            naming(&project(meta.clone()), &args(&["--name", "other", "--tag", "v9", "--registry", "127.0.0.1:5000"]))
                .expect("flags");
        assert_eq!(
            (name.as_str(), tag.as_str(), output.reference().as_str()),
            ("other", "v9", "docker://127.0.0.1:5000/other:v9")
        );
        let (_, _, output) =
            naming(&project(meta), &args(&["--output", "oci-archive:x.tar"])).expect("explicit output");
        assert_eq!(output.reference(), "oci-archive:x.tar:stable");
    }

    #[test]
    fn a_binary_that_is_not_a_service_is_named_with_the_next_step() {
        let err = models_of(Path::new("/bin/false"), "false").expect_err("fails").render();
        assert!(err.starts_with("error: `false manifest` did not list its models"), "{err}");
        assert!(err.contains("\n\nhelp: is `false` a nimify service?"), "{err}");
        let err = models_of(Path::new("/bin/echo"), "echo").expect_err("prints text").render();
        assert!(err.starts_with("error: `echo manifest` is not valid: expected value"), "{err}");
        let err = models_of(Path::new("/nonexistent/svc"), "svc").expect_err("missing").render();
        assert!(err.starts_with("error: cannot run /nonexistent/svc"), "{err}");
        // A service that fails says `error: ...` itself: quoted without a second `error:`.
        let dir = tempfile::tempdir().expect("tempdir");
        let svc = dir.path().join("svc");
        std::fs::write(&svc, "#!/bin/sh\necho 'error: ONNX Runtime library not found' >&2\nexit 1\n").expect("write");
        std::fs::set_permissions(&svc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let err = models_of(&svc, "svc").expect_err("fails").render();
        assert!(
            err.starts_with("error: `svc manifest` did not list its models (ONNX Runtime library not found)"),
            "{err}"
        );
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
}
