//! What a shared object needs, read from its ELF headers rather than by running `ldd`, which
//! cannot load a foreign binary (an aarch64 service built on an x86_64 host): the dynamic
//! loader (`PT_INTERP`), the libraries (`DT_NEEDED`) and where it asks for them
//! (`DT_RUNPATH` / `DT_RPATH`), followed through a sysroot's library directories the way the
//! loader would, for the multi-platform images of `cargo nimify image --platform`.
//!
//! Only what that needs is read: 64-bit little-endian objects (x86_64, aarch64), program
//! headers, the dynamic section and its string table; every offset is bounds-checked.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// `e_machine` of the architectures images are built for.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of aarch64.
pub const EM_AARCH64: u16 = 183;

/// What one object declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dynamic {
    /// `e_machine`.
    pub machine: u16,
    /// The dynamic loader's path (executables only).
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH`, else `DT_RPATH`, split at `:`.
    pub runpath: Vec<String>,
}

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Not an ELF file, or one of a kind this reader does not handle.
    #[error("{0} is not a 64-bit little-endian ELF object")]
    NotElf(String),
    /// A header points outside the file.
    #[error("{0} is truncated or damaged ({1})")]
    Damaged(String, &'static str),
    /// A library no search directory holds.
    #[error("{object} needs {soname}, which none of {dirs} holds")]
    Missing {
        /// The object that needs it.
        object: String,
        /// The missing library.
        soname: String,
        /// The directories looked in.
        dirs: String,
    },
    /// Reading a file failed.
    #[error("cannot read {0}: {1}")]
    Io(String, std::io::Error),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn c_string(b: &[u8], at: usize) -> Option<String> {
    let tail = b.get(at..)?;
    let end = tail.iter().position(|&c| c == 0)?;
    String::from_utf8(tail[..end].to_vec()).ok()
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Reads the dynamic information of the ELF object in `bytes` (`name` for errors).
pub fn parse(bytes: &[u8], name: &str) -> Result<Dynamic, ElfError> {
    let damaged = |why| ElfError::Damaged(name.to_string(), why);
    // ELFCLASS64, ELFDATA2LSB.
    if bytes.get(..4) != Some(b"\x7fELF") || bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err(ElfError::NotElf(name.to_string()));
    }
    let machine = u16_at(bytes, 18).ok_or_else(|| damaged("header"))?;
    let phoff = u64_at(bytes, 32).ok_or_else(|| damaged("header"))? as usize;
    let phentsize = u16_at(bytes, 54).ok_or_else(|| damaged("header"))? as usize;
    let phnum = u16_at(bytes, 56).ok_or_else(|| damaged("header"))? as usize;
    if phentsize < 56 {
        return Err(damaged("program header size"));
    }
    // (type, offset, vaddr, filesz) of each program header.
    let mut headers = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let at = phoff.checked_add(i * phentsize).ok_or_else(|| damaged("program headers"))?;
        let kind = u32_at(bytes, at).ok_or_else(|| damaged("program headers"))?;
        let offset = u64_at(bytes, at + 8).ok_or_else(|| damaged("program headers"))?;
        let vaddr = u64_at(bytes, at + 16).ok_or_else(|| damaged("program headers"))?;
        let filesz = u64_at(bytes, at + 32).ok_or_else(|| damaged("program headers"))?;
        headers.push((kind, offset, vaddr, filesz));
    }
    let interpreter = match headers.iter().find(|h| h.0 == PT_INTERP) {
        Some(&(_, offset, _, _)) => Some(c_string(bytes, offset as usize).ok_or_else(|| damaged("PT_INTERP"))?),
        None => None,
    };
    let Some(&(_, dyn_offset, _, dyn_size)) = headers.iter().find(|h| h.0 == PT_DYNAMIC) else {
        // Statically linked: needs nothing.
        return Ok(Dynamic { machine, interpreter, needed: Vec::new(), runpath: Vec::new() });
    };
    let mut entries = Vec::new();
    let mut at = dyn_offset as usize;
    let end = dyn_offset.saturating_add(dyn_size) as usize;
    while at + 16 <= end {
        let tag = u64_at(bytes, at).ok_or_else(|| damaged("dynamic section"))?;
        let value = u64_at(bytes, at + 8).ok_or_else(|| damaged("dynamic section"))?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, value));
        at += 16;
    }
    // DT_STRTAB is an address: the PT_LOAD segment holding it says where it is in the file.
    let strtab_addr = entries.iter().find(|e| e.0 == DT_STRTAB).map(|e| e.1).ok_or_else(|| damaged("no DT_STRTAB"))?;
    let strtab = headers
        .iter()
        .filter(|h| h.0 == PT_LOAD && h.2 <= strtab_addr && strtab_addr < h.2.saturating_add(h.3))
        .map(|h| (strtab_addr - h.2 + h.1) as usize)
        .next()
        .ok_or_else(|| damaged("DT_STRTAB outside every segment"))?;
    let string =
        |offset: u64| c_string(bytes, strtab.saturating_add(offset as usize)).ok_or_else(|| damaged("string table"));
    let mut needed = Vec::new();
    let (mut runpath, mut rpath) = (None, None);
    for &(tag, value) in &entries {
        match tag {
            DT_NEEDED => needed.push(string(value)?),
            DT_RUNPATH => runpath = Some(string(value)?),
            DT_RPATH => rpath = Some(string(value)?),
            _ => {}
        }
    }
    let runpath = runpath.or(rpath).map(|p| p.split(':').filter(|d| !d.is_empty()).map(String::from).collect());
    Ok(Dynamic { machine, interpreter, needed, runpath: runpath.unwrap_or_default() })
}

/// `e_machine` of a 64-bit little-endian ELF file, from its header alone.
pub fn machine(path: &Path) -> Option<u16> {
    let mut head = [0u8; 20];
    std::io::Read::read_exact(&mut std::fs::File::open(path).ok()?, &mut head).ok()?;
    (head[..4] == *b"\x7fELF" && head[4] == 2 && head[5] == 1).then(|| u16_at(&head, 18)).flatten()
}

/// Reads `path`'s dynamic information.
pub fn read(path: &Path) -> Result<Dynamic, ElfError> {
    let bytes = std::fs::read(path).map_err(|e| ElfError::Io(path.display().to_string(), e))?;
    parse(&bytes, &path.display().to_string())
}

/// Every library `objects` load, transitively, found in `dirs` (after each object's own
/// runpath, `$ORIGIN` expanded) and built for the same machine: soname -> file. The loaders named by `PT_INTERP` are not
/// included (they are paths, not sonames); see [`Dynamic::interpreter`].
pub fn closure(objects: &[&Path], dirs: &[PathBuf]) -> Result<BTreeMap<String, PathBuf>, ElfError> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut queue: VecDeque<PathBuf> = objects.iter().map(|p| p.to_path_buf()).collect();
    while let Some(object) = queue.pop_front() {
        let info = read(&object)?;
        let origin = object.parent().map(Path::to_path_buf).unwrap_or_default();
        let own: Vec<PathBuf> =
            info.runpath.iter().map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.display().to_string()))).collect();
        for soname in info.needed {
            if found.contains_key(&soname) {
                continue;
            }
            // As the loader does, a library of another machine (a runpath into the host's
            // directories) is passed over.
            let hit = own.iter().chain(dirs).map(|d| d.join(&soname)).find(|p| machine(p) == Some(info.machine));
            let Some(path) = hit else {
                let all: Vec<String> = own.iter().chain(dirs).map(|d| d.display().to_string()).collect();
                return Err(ElfError::Missing { object: object.display().to_string(), soname, dirs: all.join(", ") });
            };
            found.insert(soname, path.clone());
            queue.push_back(path);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The libraries `ldd` lists for `path`, by file name (the vDSO and the loader left out).
    fn ldd_names(path: &Path) -> Vec<String> {
        let out = std::process::Command::new("ldd").arg(path).output().expect("ldd");
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once("=>").map(|(name, _)| name.trim().to_string()))
            .filter(|n| !n.starts_with("linux-vdso"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_closure_matches_what_ldd_lists_for_this_test_binary_and_onnx_runtime() {
        let exe = std::env::current_exe().expect("exe");
        let ort = nimify::__private::ortlib::find().expect("ONNX Runtime (cargo nimify ort install)");
        let info = read(&exe).expect("this binary is ELF");
        assert_eq!(info.machine, if cfg!(target_arch = "x86_64") { EM_X86_64 } else { EM_AARCH64 });
        assert!(info.interpreter.as_deref().is_some_and(|i| i.starts_with("/lib")), "{info:?}");
        assert!(info.needed.iter().any(|n| n.starts_with("libc.so")), "{info:?}");
        let triple = if cfg!(target_arch = "x86_64") { "x86_64-linux-gnu" } else { "aarch64-linux-gnu" };
        let dirs: Vec<PathBuf> =
            [format!("/lib/{triple}"), format!("/usr/lib/{triple}"), "/lib".into(), "/usr/lib".into()]
                .map(PathBuf::from)
                .into();
        for object in [exe.as_path(), ort.as_path()] {
            let found = closure(&[object], &dirs).expect("every library found");
            // ldd also lists the loader under its soname when a library names it in DT_NEEDED.
            let ours: Vec<String> = found.keys().filter(|n| !n.starts_with("ld-linux")).cloned().collect();
            let expected: Vec<String> = ldd_names(object).into_iter().filter(|n| !n.starts_with("ld-linux")).collect();
            assert_eq!(ours, expected, "{}", object.display());
        }
    }

    #[test]
    fn a_library_of_another_machine_is_passed_over() {
        let exe = std::env::current_exe().expect("exe");
        let host = read(&exe).expect("elf");
        let libc = closure(&[&exe], &[PathBuf::from("/lib"), PathBuf::from("/usr/lib")])
            .ok()
            .and_then(|found| found.get("libc.so.6").cloned())
            .or_else(|| {
                let triple = if cfg!(target_arch = "x86_64") { "x86_64-linux-gnu" } else { "aarch64-linux-gnu" };
                Some(PathBuf::from(format!("/lib/{triple}/libc.so.6")))
            })
            .expect("libc");
        // The same library, its header saying another machine, in a directory searched first.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = std::fs::read(&libc).expect("libc");
        let other = if host.machine == EM_X86_64 { EM_AARCH64 } else { EM_X86_64 };
        bytes[18..20].copy_from_slice(&other.to_le_bytes());
        std::fs::write(dir.path().join("libc.so.6"), &bytes).expect("write");
        assert_eq!(machine(&dir.path().join("libc.so.6")), Some(other));
        let dirs = [dir.path().to_path_buf(), libc.parent().expect("dir").to_path_buf()];
        let found = closure(&[&exe], &dirs).expect("found");
        assert_eq!(found.get("libc.so.6"), Some(&libc));
        let err = closure(&[&exe], &dirs[..1]).expect_err("only the foreign one");
        assert!(err.to_string().contains("needs libc.so.6") || err.to_string().contains("needs lib"), "{err}");
    }

    #[test]
    fn damaged_and_foreign_files_are_named() {
        assert!(matches!(parse(b"#!/bin/sh\n", "script"), Err(ElfError::NotElf(n)) if n == "script"));
        let exe = std::fs::read(std::env::current_exe().expect("exe")).expect("read");
        for cut in [20, 64, 200] {
            let err = parse(&exe[..cut], "cut").expect_err("truncated");
            assert!(matches!(err, ElfError::Damaged(..)), "{cut}: {err}");
        }
        let err =
            closure(&[&std::env::current_exe().expect("exe")], &[PathBuf::from("/nonexistent")]).expect_err("no dirs");
        assert!(err.to_string().contains("needs lib") && err.to_string().contains("/nonexistent"), "{err}");
    }
}
