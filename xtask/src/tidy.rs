//! House-style facts checked as ordinary tests: every Rust file opens with a `//!` paragraph
//! saying what it is for.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_rust_file_starts_with_a_module_doc() {
        let root = crate::root();
        let mut files = Vec::new();
        for dir in ["nimify-model", "nimify-macros", "runtime", "cargo-nimify", "xtask", "tests", "examples"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(files.len() > 20, "found only {} files", files.len());
        let missing: Vec<String> = files
            .iter()
            .filter(|f| !std::fs::read_to_string(f).unwrap_or_default().starts_with("//!"))
            .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
            .collect();
        assert!(missing.is_empty(), "files without a leading `//!` paragraph: {missing:?}");
    }
}
