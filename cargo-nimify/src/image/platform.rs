//! The platforms images are built for, and what building for each needs: the Rust target, the
//! cross linker, the directories of its shared libraries (the host's own, or a Debian cross
//! sysroot such as `/usr/aarch64-linux-gnu` from `libc6-arm64-cross`), and its names in OCI
//! documents and in ELF headers.

use std::path::{Path, PathBuf};

use super::elf;
use crate::CliError;

/// A Linux platform an image can be built for.
#[derive(Debug, PartialEq, Eq)]
pub struct Platform {
    /// OCI `architecture`.
    pub architecture: &'static str,
    /// OCI `variant` (`v8` for arm64, as docker and podman write it).
    pub variant: Option<&'static str>,
    /// Rust target triple.
    pub triple: &'static str,
    /// Debian's multiarch tuple: library directories and the cross tools' prefix.
    pub multiarch: &'static str,
    /// ELF `e_machine`.
    pub machine: u16,
    /// The Debian packages that give a cross build its linker and libraries.
    pub cross_packages: &'static str,
}

/// Every platform images are built for.
pub const PLATFORMS: &[Platform] = &[
    Platform {
        architecture: "amd64",
        variant: None,
        triple: "x86_64-unknown-linux-gnu",
        multiarch: "x86_64-linux-gnu",
        machine: elf::EM_X86_64,
        cross_packages: "gcc-x86-64-linux-gnu libc6-dev-amd64-cross libstdc++6-amd64-cross",
    },
    Platform {
        architecture: "arm64",
        variant: Some("v8"),
        triple: "aarch64-unknown-linux-gnu",
        multiarch: "aarch64-linux-gnu",
        machine: elf::EM_AARCH64,
        cross_packages: "gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++6-arm64-cross",
    },
];

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "linux/{}", self.architecture)
    }
}

impl Platform {
    /// The platform of this machine.
    pub fn host() -> Result<&'static Self, CliError> {
        let arch = std::env::consts::ARCH;
        PLATFORMS.iter().find(|p| p.triple.starts_with(arch)).ok_or_else(|| {
            CliError::msg(format!("images are built on linux/amd64 and linux/arm64 machines, not on {arch}"))
        })
    }

    /// Whether this is the machine's own platform (its libraries are the host's, found by `ldd`).
    pub fn is_host(&self) -> bool {
        self.triple.starts_with(std::env::consts::ARCH) && cfg!(target_os = "linux")
    }

    /// One platform: `linux/arm64`, `linux/arm64/v8`, `linux/aarch64`, `arm64` or a target
    /// triple (`aarch64-unknown-linux-gnu`).
    pub fn parse(name: &str) -> Result<&'static Self, CliError> {
        let wanted = name.trim();
        let found = PLATFORMS.iter().find(|p| {
            let oci = format!("linux/{}", p.architecture);
            let arch = p.triple.split('-').next().unwrap_or_default();
            [oci.clone(), p.architecture.to_string(), format!("linux/{arch}"), p.triple.to_string()]
                .iter()
                .chain(p.variant.map(|v| format!("{oci}/{v}")).as_ref())
                .any(|n| n == wanted)
        });
        found.ok_or_else(|| {
            let known: Vec<String> = PLATFORMS.iter().map(ToString::to_string).collect();
            CliError::msg(format!("unknown platform {wanted:?}; images are built for {}", known.join(" and ")))
        })
    }

    /// A comma-separated list, in the order given, without repeats.
    pub fn parse_list(list: &str) -> Result<Vec<&'static Self>, CliError> {
        let mut platforms: Vec<&'static Self> = Vec::new();
        for name in list.split(',').filter(|n| !n.trim().is_empty()) {
            let p = Self::parse(name)?;
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        if platforms.is_empty() {
            return Err(CliError::msg("--platform names no platform; e.g. --platform linux/amd64,linux/arm64"));
        }
        Ok(platforms)
    }

    /// Where its shared libraries are: the host's directories, or the cross sysroot's.
    pub fn library_dirs(&self) -> Vec<PathBuf> {
        let m = self.multiarch;
        if self.is_host() {
            [format!("/lib/{m}"), format!("/usr/lib/{m}"), "/lib64".into(), "/lib".into(), "/usr/lib".into()]
                .map(PathBuf::from)
                .into()
        } else {
            // Debian's cross packages, then libraries of a foreign architecture installed with
            // `dpkg --add-architecture`.
            [format!("/usr/{m}/lib"), format!("/usr/{m}/lib64"), format!("/lib/{m}"), format!("/usr/lib/{m}")]
                .map(PathBuf::from)
                .into()
        }
    }

    /// The cross linker `cargo build --target` needs unless one is configured.
    pub fn cross_linker(&self) -> String {
        format!("{}-gcc", self.multiarch)
    }

    /// The environment variable that names the target's linker to cargo.
    pub fn linker_env(&self) -> String {
        format!("CARGO_TARGET_{}_LINKER", self.triple.to_uppercase().replace('-', "_"))
    }

    /// Checks, before any build starts, that cargo can build for this (foreign) platform from
    /// `dir` (the service crate's directory): the Rust target installed and a linker. Returns
    /// the environment that names Debian's cross linker to cargo, or nothing when
    /// `CARGO_TARGET_<TRIPLE>_LINKER` or a cargo config file already names one.
    pub fn check_build(&self, dir: &Path) -> Result<Vec<(String, String)>, CliError> {
        if !rust_target_installed(self.triple) {
            return Err(CliError::with_help(
                format!("cannot build for {self}: the Rust target {} is not installed", self.triple),
                format!("rustup target add {}", self.triple),
            ));
        }
        if std::env::var_os(self.linker_env()).is_some() || config_names_linker(dir, self.triple) {
            return Ok(Vec::new());
        }
        if crate::find_on_path(&self.cross_linker()).is_some() {
            return Ok(vec![(self.linker_env(), self.cross_linker())]);
        }
        Err(CliError::with_help(
            format!("cannot build for {self}: no linker for {} ({} is not on PATH)", self.triple, self.cross_linker()),
            format!(
                "on Debian or Ubuntu: apt-get install {}; or name another linker in {} or in [target.{}] of .cargo/config.toml",
                self.cross_packages,
                self.linker_env(),
                self.triple
            ),
        ))
    }

    /// Checks that the libraries of an image for this (foreign) platform can be packed: its C
    /// library is in one of [`Self::library_dirs`].
    pub fn check_sysroot(&self) -> Result<(), CliError> {
        if self.library_dirs().iter().any(|d| d.join("libc.so.6").is_file()) {
            return Ok(());
        }
        let dirs: Vec<String> = self.library_dirs().iter().map(|d| d.display().to_string()).collect();
        Err(CliError::with_help(
            format!(
                "cannot pack the libraries of an image for {self}: none of {} holds its C library",
                dirs.join(", ")
            ),
            format!("on Debian or Ubuntu: apt-get install {}; or pass --base with a {self} image", self.cross_packages),
        ))
    }
}

/// Whether a cargo config file cargo reads for `dir` (`.cargo/config.toml` or `.cargo/config` in
/// it and every parent, then `$CARGO_HOME`) sets `target.<triple>.linker`.
fn config_names_linker(dir: &Path, triple: &str) -> bool {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let dirs = dir.ancestors().map(|d| d.join(".cargo")).chain(cargo_home);
    dirs.flat_map(|d| [d.join("config.toml"), d.join("config")]).any(|file| {
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .is_some_and(|t| t.get("target").and_then(|t| t.get(triple)).and_then(|t| t.get("linker")).is_some())
    })
}

/// Whether `rustup` (or a toolchain without it) has the standard library of `triple`.
fn rust_target_installed(triple: &str) -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).args(["--print", "sysroot"]).output() else {
        // No rustc to ask: let cargo say what is wrong.
        return true;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    !out.status.success() || sysroot.join("lib/rustlib").join(triple).join("lib").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_in_every_spelling_and_unknown_ones_are_named() {
        for name in ["linux/arm64", "linux/arm64/v8", "linux/aarch64", "arm64", "aarch64-unknown-linux-gnu"] {
            assert_eq!(Platform::parse(name).expect(name).architecture, "arm64", "{name}");
        }
        for name in ["linux/amd64", "linux/x86_64", "x86_64-unknown-linux-gnu"] {
            assert_eq!(Platform::parse(name).expect(name).architecture, "amd64", "{name}");
        }
        let list = Platform::parse_list("linux/arm64, linux/amd64,linux/aarch64").expect("list");
        assert_eq!(list.iter().map(ToString::to_string).collect::<Vec<_>>(), ["linux/arm64", "linux/amd64"]);
        let err = Platform::parse_list("linux/amd64,linux/s390x").expect_err("unknown").to_string();
        assert_eq!(err, "unknown platform \"linux/s390x\"; images are built for linux/amd64 and linux/arm64");
        assert!(Platform::parse_list(" , ").is_err());
        assert!(Platform::parse("windows/amd64").is_err());
    }

    #[test]
    fn the_host_is_one_platform_and_its_libraries_are_found() {
        let host = Platform::host().expect("an amd64 or arm64 machine");
        assert!(host.is_host());
        assert_eq!(PLATFORMS.iter().filter(|p| p.is_host()).count(), 1);
        assert!(host.library_dirs().iter().any(|d| d.join("libc.so.6").is_file()));
        assert_eq!(
            Platform::parse("linux/arm64").expect("arm64").linker_env(),
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"
        );
    }

    #[test]
    fn a_linker_named_in_a_cargo_config_file_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crate_dir = dir.path().join("ws/svc");
        std::fs::create_dir_all(crate_dir.join(".cargo")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("ws/.cargo")).expect("mkdir");
        assert!(!config_names_linker(&crate_dir, "riscv64gc-unknown-linux-gnu"));
        let config = "[target.riscv64gc-unknown-linux-gnu]\nlinker = \"cc-rv\"\n";
        std::fs::write(dir.path().join("ws/.cargo/config.toml"), config).expect("write");
        // A broken file nearer the crate does not hide the one above it.
        std::fs::write(crate_dir.join(".cargo/config"), "not toml [").expect("write");
        assert!(config_names_linker(&crate_dir, "riscv64gc-unknown-linux-gnu"));
        assert!(!config_names_linker(&crate_dir, "aarch64-unknown-linux-gnu"));
    }
}
