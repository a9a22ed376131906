//! Taking the pinned libraries out of a wheel (a zip) or a `.tar.gz` archive, each checked against
//! its pinned size and sha256 before anything is put in place.

use std::fs::File;
use std::io::{BufReader, Read, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::pins::{Pin, PinnedFile};

/// A library written next to its final place, verified, waiting to be renamed into it.
#[derive(Debug)]
pub struct Staged {
    /// The temporary file.
    pub temp: PathBuf,
    /// Where it goes.
    pub dest: PathBuf,
}

/// Why an archive could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the archive or writing a staged file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Neither a zip nor a gzip-compressed tar.
    #[error("neither a wheel (zip) nor a .tar.gz archive")]
    UnknownFormat,
    /// The archive is damaged.
    #[error("damaged archive: {0}")]
    Damaged(String),
    /// A pinned library is not in it.
    #[error("it holds no {name}; is it the onnxruntime {version} wheel for {platform}?")]
    Missing {
        /// The library's file name.
        name: &'static str,
        /// The ONNX Runtime version pinned.
        version: &'static str,
        /// The platform it was meant for.
        platform: &'static str,
    },
    /// A library's bytes are not the pinned ones.
    #[error("its {name} {found}, but ONNX Runtime {version} for {platform} is pinned as {} bytes with sha256 {}", pinned.size, pinned.sha256)]
    Mismatch {
        /// The library's file name.
        name: &'static str,
        /// What was read: `has sha256 ...`, `has 12 bytes`, `has more than 34824680 bytes`.
        found: String,
        /// The pin.
        pinned: &'static PinnedFile,
        /// The ONNX Runtime version pinned.
        version: &'static str,
        /// The platform.
        platform: &'static str,
    },
}

/// Writes every file `pin` names from the archive at `path` into `dir` under temporary names,
/// each checked against its pin; nothing is left behind on an error.
pub fn stage(path: &Path, pin: &'static Pin, dir: &Path) -> Result<Vec<Staged>, ArchiveError> {
    let mut staged = Vec::new();
    let result = stage_into(path, pin, dir, &mut staged);
    if result.is_err() {
        for s in &staged {
            let _ = std::fs::remove_file(&s.temp);
        }
    }
    result.map(|()| staged)
}

fn stage_into(path: &Path, pin: &'static Pin, dir: &Path, staged: &mut Vec<Staged>) -> Result<(), ArchiveError> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    let read = file.read(&mut magic)?;
    file.rewind()?;
    match &magic[..read] {
        [b'P', b'K', 3, 4] => from_zip(file, pin, dir, staged),
        [0x1f, 0x8b, ..] => from_tar_gz(file, pin, dir, staged),
        _ => Err(ArchiveError::UnknownFormat),
    }
}

fn from_zip(file: File, pin: &'static Pin, dir: &Path, staged: &mut Vec<Staged>) -> Result<(), ArchiveError> {
    let damaged = |e: zip::result::ZipError| ArchiveError::Damaged(e.to_string());
    let mut archive = zip::ZipArchive::new(BufReader::new(file)).map_err(damaged)?;
    for wanted in pin.files {
        // The wheel's own path first; any other zip (a release archive) by file name.
        let index = archive.index_for_name(wanted.member).or_else(|| {
            (0..archive.len()).find(|&i| archive.name_for_index(i).is_some_and(|n| base_name(n) == wanted.name()))
        });
        let index = index.ok_or_else(|| missing(pin, wanted))?;
        let entry = archive.by_index(index).map_err(damaged)?;
        staged.push(write_checked(entry, pin, wanted, dir)?);
    }
    Ok(())
}

fn from_tar_gz(file: File, pin: &'static Pin, dir: &Path, staged: &mut Vec<Staged>) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut left: Vec<&'static PinnedFile> = pin.files.iter().collect();
    let entries = archive.entries().map_err(|e| ArchiveError::Damaged(e.to_string()))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArchiveError::Damaged(e.to_string()))?;
        // Release archives link `libonnxruntime.so` to the versioned file: only files count.
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(|e| ArchiveError::Damaged(e.to_string()))?.to_string_lossy().into_owned();
        if let Some(at) = left.iter().position(|f| f.name() == base_name(&name)) {
            let wanted = left.remove(at);
            staged.push(write_checked(entry, pin, wanted, dir)?);
        }
    }
    match left.first() {
        Some(wanted) => Err(missing(pin, wanted)),
        None => Ok(()),
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

fn missing(pin: &'static Pin, file: &'static PinnedFile) -> ArchiveError {
    ArchiveError::Missing { name: file.name(), version: nimify::__private::ortlib::ORT_VERSION, platform: pin.platform }
}

/// Copies at most one byte more than the pinned size (a lying archive cannot fill the disk),
/// hashing as it goes; the staged file is removed unless size and hash are the pinned ones.
fn write_checked(
    reader: impl Read,
    pin: &'static Pin,
    wanted: &'static PinnedFile,
    dir: &Path,
) -> Result<Staged, ArchiveError> {
    let temp = dir.join(format!(".{}.{}.partial", wanted.name(), std::process::id()));
    let result = (|| {
        let mut out = File::create(&temp)?;
        let mut hasher = sha2::Sha256::new();
        let mut limited = reader.take(wanted.size + 1);
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = limited.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.sync_all()?;
        drop(out);
        let actual = crate::image::layer::hex(&hasher.finalize());
        let found = match size {
            n if n > wanted.size => format!("has more than {} bytes", wanted.size),
            n if n < wanted.size => format!("has {n} bytes"),
            _ if actual != wanted.sha256 => format!("has sha256 {actual}"),
            _ => return Ok(()),
        };
        Err(ArchiveError::Mismatch {
            name: wanted.name(),
            found,
            pinned: wanted,
            version: nimify::__private::ortlib::ORT_VERSION,
            platform: pin.platform,
        })
    })();
    match result {
        Ok(()) => Ok(Staged { temp, dest: dir.join(wanted.name()) }),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}
