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
        &["completions", "--help"],
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

/// Replaces escape characters with `␛` so that colour codes read in snapshots.
fn visible(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\x1b', "␛")
}

#[test]
fn errors_and_status_lines_are_coloured_as_cargo_colours_them() {
    let missing = model("missing.onnx");
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = nimify();
        cmd.args(args).env_remove("CARGO_TERM_COLOR").env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        if let Some(v) = env {
            cmd.env("CARGO_TERM_COLOR", v);
        }
        let out = cmd.assert().code(1).get_output().clone();
        visible(&out.stderr).replace(&missing, "tests/models/missing.onnx")
    };
    let coloured = run(&["inspect", &missing, "--color", "always"], None);
    insta::assert_snapshot!("error_coloured", coloured);
    // CARGO_TERM_COLOR does the same; the flag wins over it; auto off a terminal is plain.
    assert_eq!(run(&["inspect", &missing], Some("always")), coloured);
    let plain = run(&["--color", "never", "inspect", &missing], Some("always"));
    insta::assert_snapshot!("error_plain", plain);
    assert_eq!(run(&["inspect", &missing, "--color", "auto"], None), plain);
    assert_eq!(run(&["inspect", &missing], None), plain);

    // Status verbs (bold green, right-aligned) and notes (bold cyan) from `new`; -q leaves only
    // the result on stdout.
    let dir = tempfile::tempdir().expect("tempdir");
    let new = |name: &str, extra: &[&str]| {
        let out = nimify()
            .current_dir(dir.path())
            .args(["new", name, "--model", &model("mlp.onnx"), "--no-interactive", "--nimify-path", "/path/to/nimify"])
            .args(extra)
            .assert()
            .success()
            .get_output()
            .clone();
        (visible(&out.stderr), String::from_utf8(out.stdout).expect("utf8"))
    };
    let (stderr, stdout) = new("svc", &["--color", "always", "--vcs", "none"]);
    insta::assert_snapshot!("new_coloured", stderr);
    assert_eq!(stdout.trim(), "svc");
    let (stderr, stdout) = new("quiet", &["-q", "--vcs", "none"]);
    assert_eq!(stderr, "", "-q prints nothing but errors");
    assert_eq!(stdout.trim(), "quiet");
}

#[test]
fn json_format_reports_errors_as_json_objects() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let outside = tempfile::tempdir().expect("tempdir");
    let cases: [(&str, PathBuf, Vec<String>, i32); 5] = [
        ("model", root.clone(), vec!["inspect".into(), "tests/models/not_onnx.onnx".into()], 1),
        ("package", root.join("examples/iris"), vec!["build".into(), "--package".into(), "nope".into()], 1),
        ("workspace", outside.path().to_path_buf(), vec!["chart".into()], 1),
        (
            "image_target",
            root.join("examples/iris"),
            vec!["image".into(), "--target".into(), "riscv64gc-unknown-linux-gnu".into()],
            1,
        ),
        ("usage", root.clone(), vec!["image".into(), "--colr".into()], 2),
    ];
    let mut all = serde_json::Map::new();
    for (name, dir, args, code) in cases {
        let out =
            nimify().current_dir(&dir).arg("--format").arg("json").args(&args).assert().code(code).get_output().clone();
        let stdout = String::from_utf8(out.stdout).expect("utf8");
        assert_eq!(stdout.lines().count(), 1, "one JSON document on one line: {stdout}");
        let mut json: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON object on stdout");
        // The machine-specific directory of the `workspace` case.
        if let Some(m) = json.pointer_mut("/error/message") {
            *m = m.as_str().expect("message").replace(&outside.path().display().to_string(), "<tmp>").into();
        }
        // People still see the report on stderr.
        assert!(String::from_utf8_lossy(&out.stderr).contains("error"), "{name}: stderr has the report too");
        all.insert(name.into(), json);
    }
    insta::assert_json_snapshot!("json_errors", all);
    // The same through NIMIFY_FORMAT, and `table` is kept as another name for `text`.
    let out = nimify().env("NIMIFY_FORMAT", "json").args(["inspect", &model("missing.onnx")]).assert().code(1);
    let json: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).expect("json");
    assert_eq!(json["error"]["kind"], "model");
    nimify().args(["inspect", &model("mlp.onnx"), "--format", "table"]).assert().success();
}

#[test]
fn completions_for_each_shell_complete_cargo_nimify() {
    let script = |shell: &str| {
        let out = nimify().args(["completions", shell]).assert().success().get_output().stdout.clone();
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("nimify") && text.contains("image"), "{shell}: {text}");
        text
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    // bash: `cargo nimify ...` is completed, and other `cargo` commands still reach the handler
    // that was registered before.
    let bash_text = script("bash");
    assert_eq!(bash_text.lines().filter(|l| l.starts_with("complete -F")).count(), 1, "one registration: {bash_text}");
    let bash = write("cargo-nimify.bash", bash_text);
    let probe = format!(
        r#"_earlier() {{ COMPREPLY=(earlier-handler); }}
complete -F _earlier cargo
source {0}
source {0}
complete_words() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); __cargo_nimify_dispatch cargo "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"; echo "${{COMPREPLY[*]}}"; }}
complete_words cargo nimify ima
complete_words cargo nimify image --no-default-f
complete_words cargo nimify completions z
complete_words cargo bui
"#,
        bash.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &probe]).output().expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "image\n--no-default-features\nzsh\nearlier-handler\n", "{out:?}");
    // fish: added to fish's completion of `cargo`.
    let fish = write("cargo-nimify.fish", script("fish"));
    let out = std::process::Command::new("fish")
        .args([
            "--no-config",
            "-c",
            &format!(
                "source {}; complete -C 'cargo nimify ima'; complete -C 'cargo nimify build --lo'",
                fish.display()
            ),
        ])
        .output()
        .expect("fish (apt install fish; cargo xtask test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("image\t") && text.contains("--locked\t"), "{out:?}");
    // zsh: the `_cargo-nimify` function cargo's own zsh completion calls; checked for syntax.
    let zsh_text = script("zsh");
    assert!(zsh_text.starts_with("#compdef cargo-nimify") && zsh_text.contains("_cargo-nimify()"), "{zsh_text}");
    let zsh = write("_cargo-nimify", zsh_text);
    let out = std::process::Command::new("zsh").arg("-n").arg(&zsh).output().expect("zsh (apt install zsh)");
    assert!(out.status.success(), "{out:?}");
    for shell in ["elvish", "powershell"] {
        script(shell);
    }
    nimify().args(["completions", "tcsh"]).assert().code(2);
}

#[test]
fn new_initialises_git_as_cargo_new_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let new = |name: &str, extra: &[&str]| {
        let out = nimify()
            .current_dir(dir.path())
            .args(["--format", "json", "new", name, "--model", &model("mlp.onnx"), "--no-interactive"])
            .args(extra)
            .assert()
            .success()
            .get_output()
            .clone();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        (json, String::from_utf8(out.stderr).expect("utf8"))
    };
    let (json, stderr) = new("fresh", &[]);
    assert_eq!(json["git"], true);
    assert!(dir.path().join("fresh/.git").is_dir());
    assert_eq!(std::fs::read_to_string(dir.path().join("fresh/.gitignore")).expect("gitignore"), "/target\n");
    // It says which nimify it depends on and why: this binary was built from a checkout.
    assert!(
        stderr.contains("note: the crate depends on nimify from") && stderr.contains("built from that checkout"),
        "{stderr}"
    );
    assert!(json["dependency"].as_str().expect("dependency").starts_with("nimify = { path = "), "{json}");
    let (json, _) = new("bare", &["--vcs", "none"]);
    assert_eq!(json["git"], false);
    assert!(!dir.path().join("bare/.git").exists() && !dir.path().join("bare/.gitignore").exists());
    // Inside a repository: no nested one, but the crate still ignores its target directory.
    let inner = dir.path().join("fresh");
    let out = nimify()
        .current_dir(&inner)
        .args(["new", "nested", "--model", &model("mlp.onnx"), "--no-interactive", "--nimify-path", "/x"])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nimify from /x (--nimify-path)"));
    assert!(!inner.join("nested/.git").exists() && inner.join("nested/.gitignore").is_file());
}

/// Reads `serve`'s stderr until its `serving` line (a minute at most) and returns that line.
fn serving_line(log_format: &str) -> String {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("cargo-nimify"))
        .args(["nimify", "serve", &model("mlp.onnx"), "--port", "0", "--grpc-port", "0", "--log-format", log_format])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let line = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("serving") && l.contains("docs"));
        let _ = tx.send(line.unwrap_or_default());
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    line
}

#[test]
fn serve_logs_its_urls_as_text_or_json() {
    let text = serving_line("text");
    assert!(text.contains("docs=http://127.0.0.1:") && text.contains("/docs metrics=http://127.0.0.1:"), "{text}");
    assert!(!text.contains('\x1b') && !text.starts_with('{'), "plain text off a terminal: {text:?}");
    let json: serde_json::Value = serde_json::from_str(&serving_line("json")).expect("a JSON log line");
    let docs = json["docs"].as_str().expect("docs");
    assert!(docs.starts_with("http://127.0.0.1:") && docs.ends_with("/docs"), "{json}");
    assert!(json["metrics"].as_str().expect("metrics").ends_with("/metrics"), "{json}");
}
