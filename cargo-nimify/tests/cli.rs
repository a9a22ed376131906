//! `cargo nimify` as a user runs it: inspect output (snapshots), help, and the one-line errors
//! that startup problems give, each with a non-zero exit.

use std::path::PathBuf;

use assert_cmd::Command;

fn model(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models").join(name).display().to_string()
}

fn nimify() -> Command {
    let mut cmd = Command::cargo_bin("cargo-nimify").expect("binary");
    cmd.arg("nimify");
    cmd
}

/// Runs `inspect` and replaces the machine-specific model path.
fn inspect(name: &str, format: &str) -> String {
    let path = model(name);
    let out = nimify().args(["inspect", &path, "--format", format]).assert().success().get_output().stdout.clone();
    String::from_utf8(out).expect("utf8").replace(&path, &format!("tests/models/{name}"))
}

#[test]
fn inspect_tables() {
    for name in ["mlp.onnx", "odd_names.onnx", "zipmap.onnx", "multi_io.onnx", "external.onnx", "scalar.onnx"] {
        insta::assert_snapshot!(format!("inspect_{name}"), inspect(name, "table"));
    }
}

#[test]
fn inspect_json() {
    let json: serde_json::Value = serde_json::from_str(&inspect("odd_names.onnx", "json")).expect("json");
    insta::assert_json_snapshot!("inspect_odd_names_json", json);
}

#[test]
fn help_texts() {
    for args in [
        &["--help"][..],
        &["inspect", "--help"],
        &["serve", "--help"],
        &["ort", "install", "--help"],
        &["new", "--help"],
        &["build", "--help"],
        &["image", "--help"],
        &["chart", "--help"],
        &["deploy", "--help"],
        &["rollback", "--help"],
    ] {
        let out = nimify().args(args).assert().success().get_output().stdout.clone();
        insta::assert_snapshot!(
            format!("help_{}", args.join("_").trim_start_matches("--")),
            String::from_utf8(out).expect("utf8")
        );
    }
}

/// Asserts a failed run (exit 1) printed one report the way cargo does: `error: ...` on one line,
/// then nothing or a blank line and `help: ...` on one line, with every `needle` in it. Returns
/// the help line's text.
fn cargo_style_error(cmd: &mut Command, needles: &[&str]) -> Option<String> {
    let out = cmd.assert().failure().code(1).get_output().clone();
    let stderr = String::from_utf8(out.stderr).expect("utf8");
    let lines: Vec<&str> = stderr.lines().collect();
    let help = match lines.as_slice() {
        [error] if error.starts_with("error: ") => None,
        [error, "", help] if error.starts_with("error: ") && help.starts_with("help: ") => {
            Some(help["help: ".len()..].to_string())
        }
        _ => panic!("expected `error: ...` and an optional `help: ...`, got:\n{stderr}"),
    };
    for n in needles {
        assert!(stderr.contains(n), "{n:?} not in {stderr:?}");
    }
    help
}

#[test]
fn inspect_refuses_broken_models() {
    cargo_style_error(nimify().args(["inspect", &model("not_onnx.onnx")]), &["not_onnx.onnx", "not an ONNX model"]);
    cargo_style_error(nimify().args(["inspect", &model("truncated.onnx")]), &["truncated.onnx", "truncated ONNX file"]);
    cargo_style_error(nimify().args(["inspect", &model("missing.onnx")]), &["missing.onnx", "No such file"]);
}

#[test]
fn serve_refuses_broken_models() {
    for (name, needle) in [
        ("not_onnx.onnx", "not an ONNX model"),
        ("truncated.onnx", "truncated ONNX file"),
        ("missing.onnx", "No such file"),
    ] {
        cargo_style_error(
            nimify().args(["serve", &model(name), "--port", "0"]).timeout(std::time::Duration::from_secs(60)),
            &[name, needle],
        );
    }
}

#[test]
fn serve_without_onnx_runtime_says_how_to_fix_it() {
    let empty = tempfile::tempdir().expect("tempdir");
    cargo_style_error(
        nimify()
            .args(["serve", &model("mlp.onnx"), "--port", "0"])
            .env_remove("ORT_DYLIB_PATH")
            .env("NIMIFY_CACHE_DIR", empty.path())
            .timeout(std::time::Duration::from_secs(60)),
        &["ONNX Runtime library not found", "tried:", "cargo nimify ort install"],
    );
    // A path that exists but is not a library: named, with the fix.
    let bogus = empty.path().join("libonnxruntime.so.1.32.0");
    std::fs::write(&bogus, b"not a library").expect("write");
    cargo_style_error(
        nimify()
            .args(["serve", &model("mlp.onnx"), "--port", "0"])
            .env("ORT_DYLIB_PATH", &bogus)
            .timeout(std::time::Duration::from_secs(60)),
        &["cannot load ONNX Runtime from", "libonnxruntime.so.1.32.0", "cargo nimify ort install"],
    );
}

#[test]
fn scaffolds_match_snapshots() {
    for template in ["plain", "custom"] {
        let dir = tempfile::tempdir().expect("tempdir");
        nimify()
            .current_dir(dir.path())
            .args([
                "new",
                "svc",
                "--model",
                &model("odd_names.onnx"),
                "--template",
                template,
                "--no-interactive",
                "--nimify-path",
                "/path/to/nimify",
            ])
            .assert()
            .success();
        let crate_dir = dir.path().join("svc");
        for file in ["Cargo.toml", "build.rs", "src/main.rs"] {
            let text = std::fs::read_to_string(crate_dir.join(file)).expect("generated file");
            insta::assert_snapshot!(format!("scaffold_{template}_{}", file.replace('/', "_")), text);
        }
        assert!(crate_dir.join("models/odd_names.onnx").is_file());
    }
}

#[test]
fn build_names_the_package_and_binary_it_cannot_find() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let iris = root.join("examples/iris");
    cargo_style_error(
        nimify().current_dir(&iris).args(["build", "--bin", "nope"]),
        &["package `example-iris` has no binary `nope`", "(binaries: example-iris)"],
    );
    cargo_style_error(
        nimify().current_dir(&iris).args(["build", "--package", "nope"]),
        &["package `nope` is not in this workspace", "example-iris"],
    );
    // The workspace root is no package: say how to pick one.
    let help = cargo_style_error(
        nimify().current_dir(&root).args(["image", "--no-build"]),
        &["is not inside a package of this workspace"],
    );
    assert_eq!(help.as_deref(), Some("run in the service crate's directory, or pass --package or --manifest-path"));
    // Outside any crate: the next steps are --manifest-path or a new service crate.
    let outside = tempfile::tempdir().expect("tempdir");
    let help =
        cargo_style_error(nimify().current_dir(outside.path()).args(["chart"]), &["cannot read the cargo workspace"])
            .expect("help");
    assert!(help.contains("--manifest-path") && help.contains("cargo nimify new"), "{help}");
}
