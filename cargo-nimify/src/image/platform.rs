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

    /// Checks that a build for this (foreign) platform can run (when `build`) and be packed,
    /// before any of it starts: the Rust target installed, a linker, the sysroot's C library.
    /// Returns the linker to set for cargo, when none is set already.
    pub fn check_cross(&self, build: bool) -> Result<Option<(String, String)>, CliError> {
        let help_apt = format!("on Debian or Ubuntu: apt-get install {}", self.cross_packages);
        if !self.library_dirs().iter().any(|d| d.join("libc.so.6").is_file()) {
            let dirs: Vec<String> = self.library_dirs().iter().map(|d| d.display().to_string()).collect();
            return Err(CliError::with_help(
                format!("cannot pack an image for {self}: none of {} holds its C library", dirs.join(", ")),
                help_apt,
            ));
        }
        if !build {
            return Ok(None);
        }
        if !rust_target_installed(self.triple) {
            return Err(CliError::with_help(
                format!("cannot build for {self}: the Rust target {} is not installed", self.triple),
                format!("rustup target add {}", self.triple),
            ));
        }
        let linker = if std::env::var_os(self.linker_env()).is_some() {
            None
        } else if on_path(&self.cross_linker()) {
            Some((self.linker_env(), self.cross_linker()))
        } else {
            return Err(CliError::with_help(
                format!(
                    "cannot build for {self}: no linker for {} ({} is not on PATH)",
                    self.triple,
                    self.cross_linker()
                ),
                format!("{help_apt}; or name another linker in {}", self.linker_env()),
            ));
        };
        Ok(linker)
    }
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

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| is_executable(&d.join(program))))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.with_extension("exe").is_file()
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
}
