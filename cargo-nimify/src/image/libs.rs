//! The default base: the shared libraries the binary and ONNX Runtime need, as `ldd` lists them on
//! the build host (libc, libm, libstdc++, libgcc_s, the dynamic loader, ...), placed at the same
//! paths in the image. No registry is needed, and the image holds nothing else. For another
//! platform (`image --platform`), `ldd` cannot load the binary: [`foreign`] follows the ELF
//! headers into the platform's cross sysroot instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::elf;
use super::platform::Platform;
use crate::CliError;

/// Image path -> host path of every library `objects` load, the dynamic loader included.
pub fn collect(objects: &[&Path]) -> Result<BTreeMap<String, PathBuf>, CliError> {
    let mut libs = BTreeMap::new();
    for object in objects {
        let out = Command::new("ldd").arg(object).output().map_err(|e| {
            CliError::msg(format!(
                "cannot run `ldd {}` to find the libraries it needs: {e}; install libc-bin, or pass --base",
                object.display()
            ))
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stdout.contains("statically linked") || stderr.contains("not a dynamic executable") {
            continue;
        }
        if !out.status.success() {
            return Err(CliError::msg(format!("`ldd {}` failed: {}", object.display(), stderr.trim())));
        }
        for (path, host) in parse(&stdout).map_err(|lib| {
            CliError::msg(format!(
                "{} needs {lib}, which is not installed on this machine; install it or pass --base",
                object.display()
            ))
        })? {
            libs.insert(path, host);
        }
    }
    Ok(libs)
}

/// Image path -> host path of every library `objects` (built for `platform`, not this machine)
/// load, found in the platform's library directories ([`Platform::library_dirs`]): each library
/// goes to `/lib/<multiarch>/` (where the platform's own loader looks), and the loader itself to
/// the path the first object's `PT_INTERP` names.
pub fn foreign(platform: &Platform, objects: &[&Path]) -> Result<BTreeMap<String, PathBuf>, CliError> {
    let dirs = platform.library_dirs();
    let help = || format!("on Debian or Ubuntu: apt-get install {}", platform.cross_packages);
    super::check_machine(platform, objects)?;
    let found = elf::closure(objects, &dirs)
        .map_err(|e| CliError::with_help(format!("cannot pack the libraries for {platform}: {e}"), help()))?;
    let mut libs: BTreeMap<String, PathBuf> =
        found.into_iter().map(|(soname, host)| (format!("/lib/{}/{soname}", platform.multiarch), host)).collect();
    let Some(first) = objects.first() else { return Ok(libs) };
    if let Some(loader) = elf::read(first).map_err(|e| CliError::msg(e.to_string()))?.interpreter {
        let name = Path::new(&loader).file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let host = dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file()).ok_or_else(|| {
            CliError::with_help(
                format!(
                    "{} needs the dynamic loader {loader}, which none of the {platform} library directories holds",
                    first.display()
                ),
                help(),
            )
        })?;
        libs.insert(loader, host);
    }
    Ok(libs)
}

/// Parses `ldd` output: `name => /path (addr)`, `/path (addr)`; skips the vDSO. A library
/// `ldd` cannot find is returned as the error.
fn parse(out: &str) -> Result<Vec<(String, PathBuf)>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_string());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push((path.to_string(), PathBuf::from(path)));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f6d)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6d)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f6d)\n";
        let got = parse(out).expect("parse");
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
        );
        assert_eq!(parse("\tlibfoo.so.3 => not found\n").expect_err("missing"), "libfoo.so.3");
    }

    #[test]
    fn collects_this_test_binary_libraries() {
        let exe = std::env::current_exe().expect("exe");
        let libs = collect(&[&exe]).expect("ldd");
        assert!(libs.keys().any(|p| p.contains("libc.so")), "{libs:?}");
        assert!(libs.values().all(|p| p.is_file()), "{libs:?}");
    }
}
