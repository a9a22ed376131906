//! `cargo nimify chart`, `deploy` and `rollback` on the iris example with a recorded image (as
//! `cargo nimify image` leaves it) in a private target directory: the exact helm commands each
//! environment runs (`--dry-run`, Helm 3 and 4 flags), and the errors for an unknown environment
//! and a missing `helm`. (No Kubernetes API server can run here; the chart itself is linted,
//! rendered and validated by tests/python/test_chart.py.)

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use nimify_model::contract::{ImageRecord, ModelRecord, SCHEMA_VERSION};

const DIGEST: &str = "sha256:2c7ad9b926b1b098a63cbbb930828c580d9757b3f5f1f6956f72eaafc9599166";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace root")
}

/// A target directory holding the image record `chart` and `deploy` read.
fn recorded_image() -> tempfile::TempDir {
    let target = tempfile::tempdir().expect("tempdir");
    let state = target.path().join("nimify/example-iris");
    std::fs::create_dir_all(&state).expect("state dir");
    let record = ImageRecord {
        schema_version: SCHEMA_VERSION,
        reference: "docker://registry.example.test/ml/iris:0.1.0".into(),
        digest: DIGEST.into(),
        platforms: Vec::new(),
        repository: "registry.example.test/ml/iris".into(),
        tag: "0.1.0".into(),
        package: "example-iris".into(),
        version: "0.1.0".into(),
        bin: "example-iris".into(),
        port: 8000,
        grpc_port: Some(8001),
        user: 65532,
        base: None,
        models: vec![ModelRecord {
            name: "iris".into(),
            file: "iris.onnx".into(),
            sha256: "ab".repeat(32),
            size: 3_000_000,
        }],
        layers: Vec::new(),
        size: 0,
    };
    std::fs::write(state.join("image.json"), record.to_json().expect("json")).expect("image.json");
    target
}

/// `cargo nimify ARGS` in the iris example with the given target directory and PATH.
fn nimify(target: &Path, path: &str, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("cargo-nimify")
        .expect("binary")
        .current_dir(root().join("examples/iris"))
        .env("CARGO_TARGET_DIR", target)
        .env("PATH", path)
        .env_remove("NIMIFY_HELM")
        .arg("nimify")
        .args(args)
        .output()
        .expect("run")
}

fn clean(text: &[u8], target: &Path) -> String {
    String::from_utf8_lossy(text)
        .replace(&target.display().to_string(), "[TARGET]")
        .replace(&root().display().to_string(), "[ROOT]")
}

/// A PATH without helm (cargo itself comes from $CARGO).
fn no_helm() -> String {
    std::env::temp_dir().display().to_string()
}

#[test]
fn deploy_and_rollback_dry_runs_per_environment() {
    let target = recorded_image();
    let mut all = String::new();
    for env in ["dev", "staging", "prod"] {
        for version in ["3", "4"] {
            let out =
                nimify(target.path(), &no_helm(), &["deploy", "--env", env, "--dry-run", "--helm-version", version]);
            assert!(out.status.success(), "{}", clean(&out.stderr, target.path()));
            all += &format!(
                "$ cargo nimify deploy --env {env} --dry-run --helm-version {version}\n{}",
                clean(&out.stdout, target.path())
            );
        }
        let out = nimify(target.path(), &no_helm(), &["deploy", "--env", env, "--dry-run", "--render", "manifests"]);
        assert!(out.status.success(), "{}", clean(&out.stderr, target.path()));
        all += &format!(
            "$ cargo nimify deploy --env {env} --dry-run --render manifests\n{}",
            clean(&out.stdout, target.path())
        );
        let out = nimify(target.path(), &no_helm(), &["rollback", "--env", env, "--dry-run"]);
        all += &format!("$ cargo nimify rollback --env {env} --dry-run\n{}", clean(&out.stdout, target.path()));
        let out = nimify(target.path(), &no_helm(), &["rollback", "--env", env, "--revision", "4", "--dry-run"]);
        all += &format!(
            "$ cargo nimify rollback --env {env} --revision 4 --dry-run\n{}",
            clean(&out.stdout, target.path())
        );
    }
    insta::assert_snapshot!("deploy_dry_runs", all);
    // Without --helm-version and without helm, a dry run says which flags it shows.
    let out = nimify(target.path(), &no_helm(), &["deploy", "--env", "dev", "--dry-run"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("helm not found; showing Helm 4 flags"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--rollback-on-failure"));
}

#[test]
fn canary_deploy_promote_and_abort_dry_runs() {
    let target = recorded_image();
    let stable = "sha256:".to_string() + &"0".repeat(64);
    let mut all = String::new();
    for args in [
        vec!["deploy", "--env", "prod", "--canary", "10", "--dry-run", "--helm-version", "4"],
        vec![
            "deploy",
            "--env",
            "prod",
            "--canary",
            "50",
            "--stable-digest",
            &stable,
            "--dry-run",
            "--helm-version",
            "3",
        ],
        vec!["promote", "--env", "prod", "--dry-run", "--helm-version", "4"],
        vec!["abort", "--env", "prod", "--dry-run", "--helm-version", "4"],
        vec![
            "abort",
            "--env",
            "prod",
            "--stable-digest",
            &stable,
            "--canary-digest",
            DIGEST,
            "--dry-run",
            "--helm-version",
            "4",
        ],
    ] {
        let out = nimify(target.path(), &no_helm(), &args);
        assert!(out.status.success(), "{}", clean(&out.stderr, target.path()));
        all += &format!("$ cargo nimify {}\n{}", args.join(" "), clean(&out.stdout, target.path()));
    }
    insta::assert_snapshot!("canary_dry_runs", all);
    // Mistakes: a weight above 100, a canary of the image the stable pods already run, a
    // stable digest without --canary, and without helm outside a dry run.
    let out = nimify(target.path(), &no_helm(), &["deploy", "--env", "prod", "--canary", "150", "--dry-run"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("150 is not in 0..=100"));
    let out = nimify(
        target.path(),
        &no_helm(),
        &["deploy", "--env", "prod", "--canary", "10", "--stable-digest", DIGEST, "--dry-run"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is the one the stable pods run"), "{err}");
    let out = nimify(target.path(), &no_helm(), &["deploy", "--env", "prod", "--stable-digest", DIGEST, "--dry-run"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--canary"));
    let out = nimify(target.path(), &no_helm(), &["promote", "--env", "prod"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("helm not found"));
    let out = nimify(target.path(), &no_helm(), &["promote", "--env", "nowhere", "--dry-run"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown environment `nowhere`"));
}

#[test]
fn chart_is_filled_in_from_the_image_record() {
    let target = recorded_image();
    let out = nimify(target.path(), &no_helm(), &["chart", "--format", "json"]);
    assert!(out.status.success(), "{}", clean(&out.stderr, target.path()));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(result["image"], format!("registry.example.test/ml/iris@{DIGEST}"));
    let chart = target.path().join("nimify/example-iris/chart");
    let values = std::fs::read_to_string(chart.join("values.yaml")).expect("values");
    // Only the filled-in lines differ from cargo-nimify/chart/values.yaml.
    let pristine = std::fs::read_to_string(root().join("cargo-nimify/chart/values.yaml")).expect("pristine values");
    assert_eq!(values.lines().count(), pristine.lines().count());
    let changed: Vec<String> = values
        .lines()
        .zip(pristine.lines())
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, _))| format!("{}: {a}", i + 1))
        .collect();
    insta::assert_snapshot!("chart_values", changed.join("\n"));
    let chart_yaml = std::fs::read_to_string(chart.join("Chart.yaml")).expect("Chart.yaml");
    assert!(
        chart_yaml.contains("name: example-iris\n") && chart_yaml.contains("appVersion: \"0.1.0\"\n"),
        "{chart_yaml}"
    );
    for file in [
        "templates/deployment.yaml",
        "templates/tests/test-healthcheck.yaml",
        "files/dashboard.json",
        "values.schema.json",
        "values-prod.yaml",
    ] {
        assert!(chart.join(file).is_file(), "{file} missing");
    }
}

#[test]
fn missing_image_record_helm_and_environment_are_clear_errors() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = nimify(empty.path(), &no_helm(), &["chart"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        clean(&out.stderr, empty.path()).contains("run `cargo nimify image` first"),
        "{}",
        clean(&out.stderr, empty.path())
    );
    assert!(clean(&out.stderr, empty.path()).contains("\n\nhelp: run `cargo nimify image` first"));
    // A record from another nimify (older, unversioned, or cut short) is named, not misread.
    let state = empty.path().join("nimify/example-iris");
    std::fs::create_dir_all(&state).expect("state dir");
    for (text, want) in [
        (r#"{"reference": "oci:x", "digest": "sha256:00"}"#, "no schema_version"),
        (
            r#"{"schema_version": 7}"#,
            "has schema version 7, but this nimify reads version 1; run `cargo nimify image` again",
        ),
        (r#"{"schema_version": 1, "reference": "oci:x""#, "is not valid: EOF while parsing"),
    ] {
        std::fs::write(state.join("image.json"), text).expect("record");
        let out = nimify(empty.path(), &no_helm(), &["chart"]);
        assert_eq!(out.status.code(), Some(1));
        let err = clean(&out.stderr, empty.path());
        assert!(err.starts_with("error: [TARGET]/nimify/example-iris/image.json ") && err.contains(want), "{err}");
    }
    let target = recorded_image();
    let out = nimify(target.path(), &no_helm(), &["deploy", "--env", "qa", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = clean(&out.stderr, target.path());
    assert!(
        err.contains("unknown environment `qa`")
            && err.contains("(defined: dev, prod, staging)")
            && err.contains("[package.metadata.nimify.env.qa]"),
        "{err}"
    );
    for args in [
        &["deploy", "--env", "dev"][..],
        &["deploy", "--env", "dev", "--render", "out"],
        &["rollback", "--env", "prod"],
    ] {
        let out = nimify(target.path(), &no_helm(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = clean(&out.stderr, target.path());
        assert!(err.contains("helm not found on PATH") && err.contains("https://helm.sh/docs/intro/install/"), "{err}");
    }
}

/// A stand-in `helm` (no helm binary can be installed here): answers `helm version` with the
/// version given, records every other invocation's argv, talks on stdout as helm does, and
/// fails `upgrade` when asked to.
fn stand_in_helm(dir: &Path, version: &str, fail_upgrade: bool) -> PathBuf {
    let log = dir.join("helm.log");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = version ]; then echo {version}; exit 0; fi\necho \"$*\" >> {log}\necho \"Release \\\"$3\\\" has been upgraded. Happy Helming!\"\nif [ \"$1\" = upgrade ] && [ {fail} = 1 ]; then echo 'Error: context deadline exceeded' >&2; exit 1; fi\nexit 0\n",
        log = log.display(),
        fail = u8::from(fail_upgrade)
    );
    let helm = dir.join("helm");
    std::fs::write(&helm, script).expect("script");
    #[cfg(unix)]
    std::fs::set_permissions(&helm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    log
}

#[test]
fn deploy_runs_helm_with_the_flags_its_version_takes() {
    let target = recorded_image();
    for (version, flag) in [("v3.14.2", "--atomic"), ("v4.0.1", "--rollback-on-failure")] {
        let bin = tempfile::tempdir().expect("bin dir");
        let log = stand_in_helm(bin.path(), version, false);
        let out = nimify(target.path(), &bin.path().display().to_string(), &["deploy", "--env", "staging"]);
        assert!(out.status.success(), "{}", clean(&out.stderr, target.path()));
        let calls = clean(std::fs::read_to_string(&log).expect("log").as_bytes(), target.path());
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 2, "{calls}");
        assert!(lines[0].starts_with("upgrade --install example-iris [TARGET]/nimify/example-iris/chart --namespace iris-staging --kube-context staging") && lines[0].ends_with(flag), "{calls}");
        assert_eq!(lines[1], "test example-iris --namespace iris-staging --kube-context staging");
        let out = nimify(
            target.path(),
            &bin.path().display().to_string(),
            &["rollback", "--env", "staging", "--revision", "2"],
        );
        assert!(out.status.success());
        assert!(std::fs::read_to_string(&log).expect("log").ends_with(
            "rollback example-iris 2 --namespace iris-staging --kube-context staging --wait --timeout 10m\n"
        ));
    }
    // --format json: one JSON document on stdout; helm's own chatter goes to stderr.
    let bin = tempfile::tempdir().expect("bin dir");
    stand_in_helm(bin.path(), "v4.0.1", false);
    let out =
        nimify(target.path(), &bin.path().display().to_string(), &["deploy", "--env", "staging", "--format", "json"]);
    assert!(out.status.success(), "{}", clean(&out.stderr, target.path()));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!((doc["release"].as_str(), doc["namespace"].as_str()), (Some("example-iris"), Some("iris-staging")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Happy Helming"));
    // A failed upgrade (helm rolls back itself) is exit 1, and no `helm test` runs after it.
    let bin = tempfile::tempdir().expect("bin dir");
    let log = stand_in_helm(bin.path(), "v4.0.1", true);
    let out = nimify(target.path(), &bin.path().display().to_string(), &["deploy", "--env", "prod"]);
    assert_eq!(out.status.code(), Some(1));
    let err = clean(&out.stderr, target.path());
    assert!(err.contains("context deadline exceeded") && err.contains("upgrade failed"), "{err}");
    assert_eq!(std::fs::read_to_string(&log).expect("log").lines().count(), 1);
}
