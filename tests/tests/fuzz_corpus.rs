//! The fuzz corpus replayed on stable: every input the long fuzz runs kept (minimized by
//! `cargo xtask fuzz`, committed in `tests/fuzz-corpus/<target>/`), and every crash they found,
//! run through the same code as the fuzz targets. A panic here is a regression.

use std::path::Path;

#[test]
fn every_corpus_input_gets_an_answer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus");
    for (target, run) in nimify_tests::fuzz::TARGETS {
        let dir = root.join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= 5, "{}: the corpus of {target} is (nearly) empty", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("read corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} panicked on {}", file.display());
        }
    }
}
