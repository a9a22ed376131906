//! `cargo xtask bench [signature|serve|macro|image]` (`image` lives in `bench_image.rs`).
//!
//! - `signature`: criterion, reading the signature of a generated 1 GiB model.
//! - `macro`: rebuild time of a crate whose `#[nimify]` points at a tiny model vs the generated
//!   1 GiB one (the macro reads only the signature, so they should match).
//! - `serve`: the release service with one intra-op thread, pinned to core 0, under `wrk` pinned
//!   to core 1, over the V2 binary protocol at concurrency 1, 8 and 32 and over V2 JSON at 1, for
//!   a small MLP, a ResNet-18-shaped CNN and a BERT-like encoder generated into
//!   `target/bench-models/` (never committed). Prints requests/s, p50, p99, the server's CPU per
//!   request (user + system, from /proc), resident memory, start-to-ready time, and the ratio to an in-process
//!   ONNX Runtime loop with the same threads (`runtime/benches/ort_loop.rs`); and a start-up table:
//!   spawn-to-ready and peak RSS for the first start into an empty optimized-model cache, for
//!   starts from the cache and with it off (each model's servers get a cache directory of their
//!   own under `target/bench-models/`). Then the same
//!   servers under Triton's perf_analyzer (pinned to core 1) over HTTP (binary tensors) and over
//!   gRPC at the same concurrencies: one client for both protocols, so the rows compare them.
//!   `--models mlp`, `--seconds N` and `--wrk-only` narrow it; `NIMIFY_BENCH_SERVER=BIN` measures
//!   another build (an earlier commit's) instead of building this one; `--otlp` runs it with tracing on
//!   (every request traced, exported over OTLP/HTTP to `xtask/bench/otlp_sink.py` on core 1),
//!   for the cost of tracing against a run without; `--drift RATE` runs it with drift monitoring
//!   on (a reference profile made by `cargo nimify profile` from 2000 random rows, requests
//!   sampled at RATE), for the cost of drift against a run without.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

pub fn run(rest: &[&str]) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::root());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    match rest {
        ["signature"] => cmd!(sh, "{cargo} bench -p nimify-model --bench signature").run()?,
        ["serve", args @ ..] => serve(&sh, &cargo, args)?,
        ["macro"] => macro_expansion(&sh, &cargo)?,
        ["image", args @ ..] => crate::bench_image::run(&sh, &cargo, args)?,
        [] => {
            cmd!(sh, "{cargo} bench -p nimify-model --bench signature").run()?;
            serve(&sh, &cargo, &[])?;
        }
        other => bail!(
            "unknown benchmark {other:?}; available: signature, serve [--seconds N], macro, image [--profile NAME]"
        ),
    }
    Ok(())
}

/// One benchmark model: file, input name, per-request shape.
struct BenchModel {
    name: &'static str,
    input: &'static str,
    shape: &'static [usize],
}

const MODELS: &[BenchModel] = &[
    BenchModel { name: "mlp", input: "x", shape: &[1, 64] },
    BenchModel { name: "cnn", input: "image", shape: &[1, 3, 224, 224] },
    BenchModel { name: "bert", input: "embeddings", shape: &[1, 128, 384] },
];

/// `serve`'s options: `--seconds N` (per row, default 10), `--models mlp,cnn,bert` (default all),
/// `--wrk-only` (no perf_analyzer rows), `--otlp` (tracing on: every request traced and
/// exported over OTLP/HTTP to a sink started here, `xtask/bench/otlp_sink.py`).
struct ServeOptions {
    seconds: u64,
    models: Vec<String>,
    wrk_only: bool,
    otlp: bool,
    drift: Option<String>,
}

impl ServeOptions {
    fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Self {
            seconds: 10,
            models: MODELS.iter().map(|m| m.name.into()).collect(),
            wrk_only: false,
            otlp: false,
            drift: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--seconds" => {
                    o.seconds = args
                        .next()
                        .context("--seconds needs a value")?
                        .parse()
                        .context("--seconds takes a whole number")?;
                }
                "--models" => {
                    o.models = args.next().context("--models needs a value")?.split(',').map(String::from).collect()
                }
                "--wrk-only" => o.wrk_only = true,
                "--otlp" => o.otlp = true,
                "--drift" => o.drift = Some(args.next().context("--drift needs a sample rate, 0 to 1")?.to_string()),
                other => bail!(
                    "unknown option {other}; serve takes --seconds N, --models mlp,cnn,bert, --wrk-only, --otlp, --drift RATE"
                ),
            }
        }
        Ok(o)
    }
}

fn serve(sh: &Shell, cargo: &str, args: &[&str]) -> Result<()> {
    let options = ServeOptions::parse(args)?;
    let seconds = options.seconds;
    let root = crate::root();
    let models = root.join("target/bench-models");
    let python = crate::test::venv_python(sh)?;
    if MODELS.iter().any(|m| !models.join(format!("{}.onnx", m.name)).is_file()) {
        cmd!(sh, "{python} xtask/bench/make_bench_models.py {models}").run()?;
    }
    if cmd!(sh, "which wrk").quiet().ignore_stdout().run().is_err() {
        cmd!(sh, "apt-get install -y -qq wrk").run().context("installing wrk (the load generator)")?;
    }
    // NIMIFY_BENCH_SERVER: another build to measure (an earlier commit's, for a before/after).
    let server_bin = match std::env::var_os("NIMIFY_BENCH_SERVER") {
        Some(bin) => PathBuf::from(bin),
        None => {
            cmd!(sh, "{cargo} build -q --release -p cargo-nimify").run()?;
            root.join("target/release/cargo-nimify")
        }
    };
    cmd!(sh, "{cargo} bench -q -p nimify --bench ort_loop --no-run").run()?;
    // Tracing on: a sink on core 1 (beside the load generator), every request sampled.
    let sink = if options.otlp {
        let port = free_port()?;
        let child = Command::new("taskset")
            .args(["-c", "1"])
            .arg(&python)
            .arg(root.join("xtask/bench/otlp_sink.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the OTLP sink")?;
        Some((child, port))
    } else {
        None
    };
    let otel_env: Vec<(String, String)> = match &sink {
        Some((_, port)) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), format!("http://127.0.0.1:{port}")),
            ("OTEL_TRACES_SAMPLER".into(), "always_on".into()),
        ],
        None => Vec::new(),
    };
    // The servers get a cache directory of their own (below), so name the library outright.
    let ort_lib = cmd!(sh, "{server_bin} nimify ort path").read().context("finding ONNX Runtime")?;
    // Each row's text without its last column, and its requests/s.
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut references = Vec::new();
    let mut starts = Vec::new();
    for m in MODELS.iter().filter(|m| options.models.iter().any(|n| n == m.name)) {
        let path = models.join(format!("{}.onnx", m.name));
        let size = std::fs::metadata(&path)?.len();
        // The in-process loop runs before and after the model's server rows, and the rows are
        // compared with the mean of both: the machine's speed drifts by several percent over a
        // minute, and a reference measured on one side only would carry that drift.
        let in_process = || -> Result<f64> {
            let out = cmd!(sh, "taskset -c 0 {cargo} bench -q -p nimify --bench ort_loop")
                .env("NIMIFY_BENCH_MODEL", &path)
                .env("NIMIFY_BENCH_SECONDS", seconds.to_string())
                .env("NIMIFY_BENCH_THREADS", "1")
                .read()?;
            eprintln!("{}: in-process ONNX Runtime loop: {out}", m.name);
            json_number(&out, "runs_per_sec").context("ort_loop output")
        };
        let before = in_process()?;
        let first_row = rows.len();
        let mut env = otel_env.clone();
        // An empty optimized-model cache: the first start makes the entry, the others read it.
        let cache = models.join(format!("cache-{}", m.name));
        let _ = std::fs::remove_dir_all(&cache);
        env.push(("NIMIFY_CACHE_DIR".into(), cache.display().to_string()));
        env.push(("ORT_DYLIB_PATH".into(), ort_lib.clone()));
        starts.push(start_up(m.name, &server_bin, &path, &env)?);
        if let Some(rate) = &options.drift {
            let sample = models.join(format!("{}.sample.npz", m.name));
            let profile = models.join(format!("{}.profile.json", m.name));
            let (input, dims) = (m.input, m.shape[1..].iter().map(ToString::to_string).collect::<Vec<_>>().join(","));
            let make = format!(
                "import numpy as np; np.savez('{}', {input}=np.random.default_rng(1).normal(size=(2000,{dims})).astype(np.float32))",
                sample.display()
            );
            cmd!(sh, "{python} -c {make}").run()?;
            cmd!(sh, "{server_bin} nimify profile --model {path} --data {sample} --out {profile}").quiet().run()?;
            env.push(("NIMIFY_REFERENCE".into(), profile.display().to_string()));
            env.push(("NIMIFY_DRIFT_SAMPLE_RATE".into(), rate.clone()));
        }
        let binary = binary_body(m);
        let binary_file = root.join(format!("target/bench-models/{}.body", m.name));
        std::fs::write(&binary_file, &binary.0)?;
        let json_file = root.join(format!("target/bench-models/{}.json", m.name));
        std::fs::write(&json_file, json_body(m))?;
        let script = root.join("target/bench-models/post.lua");
        std::fs::write(&script, LUA)?;
        // Every model over binary at 1, 8 and 32; over JSON at 1 (the decode cost shows there).
        let plan = [("binary", 1), ("binary", 8), ("binary", 32), ("json", 1)];
        for (protocol, concurrency) in plan {
            let port = free_port()?;
            let (mut child, ready) = start_server(&server_bin, &path, port, free_port()?, &env)?;
            let url = format!("http://127.0.0.1:{port}/v2/models/{}/infer", m.name);
            let (c, d) = (format!("-c{concurrency}"), format!("-d{seconds}s"));
            let (body_file, hlen) = match protocol {
                "json" => (&json_file, String::new()),
                _ => (&binary_file, binary.1.to_string()),
            };
            let cpu_before = cpu_ticks(child.id());
            let out = cmd!(sh, "taskset -c 1 wrk -t1 {c} {d} --latency -s {script} {url}")
                .env("BODY", body_file)
                .env("HLEN", hlen)
                .read()?;
            let cpu = cpu_ticks(child.id()).saturating_sub(cpu_before);
            let rss = rss_kib(child.id());
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
            let w = parse_wrk(&out).with_context(|| format!("parsing wrk output:\n{out}"))?;
            // Clock ticks are 10 ms: the server's CPU per request, in µs.
            let cpu_us = cpu as f64 * 1e6 / ticks_per_second() / w.requests.max(1) as f64;
            rows.push((
                format!(
                "| {} | {protocol} | {concurrency} | {:.0} | {} | {} | {} | {cpu_us:.1} µs | {:.1} MB (model {:.1} MB) | {:.0} ms |",
                m.name,
                w.rps,
                w.p50,
                w.p99,
                w.errors,
                rss as f64 / 1024.0,
                size as f64 / 1e6,
                ready.as_secs_f64() * 1000.0,
                ),
                w.rps,
            ));
        }
        let after = in_process()?;
        let reference = (before + after) / 2.0;
        references.push(format!("| {} | {before:.1} | {after:.1} | {reference:.1} |", m.name));
        for row in &mut rows[first_row..] {
            let (text, rps) = std::mem::take(row);
            *row = (format!("{text} {:.2} |", rps / reference), rps);
        }
    }
    if let Some((mut child, _)) = sink {
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = child.wait();
        println!(
            "\ntracing on (always_on, OTLP/HTTP to a local sink): {}",
            out.lines().last().unwrap_or("the sink printed nothing")
        );
    }
    println!("\nstart-up (spawn to ready, one intra-op thread, pinned; peak RSS at ready):\n");
    println!(
        "| model | first start (optimizes, fills the cache) | from the cache (median of 5) | cache off (median of 5) |"
    );
    println!("|---|---|---|---|");
    for s in starts {
        println!("{s}");
    }
    println!(
        "\n| model | protocol | concurrency | requests/s | p50 | p99 | errors | server CPU per request | peak RSS | start to ready | vs in-process |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (r, _) in rows {
        println!("{r}");
    }
    println!("\nin-process ONNX Runtime loop (runs/s, batch 1), before and after each model's rows:\n");
    println!("| model | before | after | reference (mean) |");
    println!("|---|---|---|---|");
    for r in references {
        println!("{r}");
    }
    if options.wrk_only {
        return Ok(());
    }
    let protocols = protocol_rows(sh, &server_bin, &models, &options)?;
    println!("\nperf_analyzer (one client, both protocols):\n");
    println!("| model | protocol | concurrency | requests/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for r in protocols {
        println!("{r}");
    }
    Ok(())
}

/// perf_analyzer against a fresh server per model, protocol and concurrency: requests/s and the
/// p50 / p99 latency it measured, in ms.
fn protocol_rows(sh: &Shell, server_bin: &Path, models: &Path, options: &ServeOptions) -> Result<Vec<String>> {
    let pa = crate::test::perf_analyzer(sh)?;
    let cudart = cuda_runtime_dir(&crate::root().join(".venv-pa/lib"))?;
    let csv = crate::root().join("target/bench-models/perf.csv");
    let interval = (options.seconds * 1000).to_string();
    let mut rows = Vec::new();
    for m in MODELS.iter().filter(|m| options.models.iter().any(|n| n == m.name)) {
        let path = models.join(format!("{}.onnx", m.name));
        for protocol in ["http", "grpc"] {
            for concurrency in [1, 8, 32] {
                let (port, grpc_port) = (free_port()?, free_port()?);
                let (mut child, _) = start_server(server_bin, &path, port, grpc_port, &[])?;
                let url = format!("127.0.0.1:{}", if protocol == "grpc" { grpc_port } else { port });
                let (name, c) = (m.name, concurrency.to_string());
                let result = cmd!(sh, "taskset -c 1 {pa} -m {name} -u {url} -i {protocol} --concurrency-range {c} --measurement-interval {interval} --stability-percentage 100 --max-trials 3 -f {csv}")
                    .env("LD_LIBRARY_PATH", &cudart)
                    .quiet()
                    .ignore_stdout()
                    .run();
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
                let _ = child.wait();
                result.with_context(|| format!("perf_analyzer -i {protocol} on {name}"))?;
                let text = std::fs::read_to_string(&csv)?;
                let (rps, p50, p99) =
                    parse_perf_csv(&text).with_context(|| format!("parsing perf_analyzer's CSV:\n{text}"))?;
                rows.push(format!(
                    "| {name} | {protocol} | {concurrency} | {rps:.0} | {:.3} ms | {:.3} ms |",
                    p50 / 1000.0,
                    p99 / 1000.0
                ));
            }
        }
    }
    Ok(rows)
}

/// (inferences/s, p50 µs, p99 µs) from perf_analyzer's `-f` CSV.
fn parse_perf_csv(text: &str) -> Option<(f64, f64, f64)> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').collect();
    let row: Vec<&str> = lines.next()?.split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i)?.parse::<f64>().ok());
    Some((col("Inferences/Second")?, col("p50 latency")?, col("p99 latency")?))
}

/// The directory holding libcudart, which perf_analyzer links even for CPU-only servers.
fn cuda_runtime_dir(base: &Path) -> Result<PathBuf> {
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libcudart.so")) {
                return Ok(dir);
            }
        }
    }
    bail!("libcudart not found under {}; `cargo xtask test` installs perf_analyzer's environment", base.display())
}

const LUA: &str = r#"-- POST the request read from $BODY: V2 binary with header length $HLEN, else JSON.
wrk.method = "POST"
local f = io.open(os.getenv("BODY"), "rb")
wrk.body = f:read("*a")
f:close()
local hlen = os.getenv("HLEN")
if hlen ~= nil and hlen ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = hlen
  wrk.headers["Content-Type"] = "application/octet-stream"
else
  wrk.headers["Content-Type"] = "application/json"
end
"#;

/// A V2 JSON request as clients write one: flat `data`, values in [-2, 2) with three decimals
/// (for the CNN, 1.1 MB), asking for JSON outputs.
fn json_body(m: &BenchModel) -> String {
    let n: usize = m.shape.iter().product();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let data: Vec<String> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let v = (state >> 33) as f64 / (1u64 << 31) as f64 * 4.0 - 2.0;
            format!("{v:.3}")
        })
        .collect();
    format!(
        r#"{{"inputs":[{{"name":"{}","shape":{:?},"datatype":"FP32","data":[{}]}}]}}"#,
        m.input,
        m.shape,
        data.join(",")
    )
}

/// User plus system CPU of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A V2 binary request of zeros: (body, JSON header length).
fn binary_body(m: &BenchModel) -> (Vec<u8>, usize) {
    let n: usize = m.shape.iter().product();
    let header = format!(
        r#"{{"inputs":[{{"name":"{}","shape":{:?},"datatype":"FP32","parameters":{{"binary_data_size":{}}}}}],"parameters":{{"binary_data_output":true}}}}"#,
        m.input,
        m.shape,
        n * 4
    );
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, n * 4));
    (body, header.len())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One model's start-up row: the first start into an empty cache (`env` names it), then five from
/// the cache and five with it off (medians), each as spawn-to-ready and peak RSS at ready.
fn start_up(name: &str, bin: &Path, model: &Path, env: &[(String, String)]) -> Result<String> {
    let once = |env: &[(String, String)]| -> Result<(f64, f64)> {
        let (mut child, ready) = start_server(bin, model, free_port()?, free_port()?, env)?;
        let rss = rss_kib(child.id()) as f64 / 1024.0;
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let _ = child.wait();
        Ok((ready.as_secs_f64() * 1000.0, rss))
    };
    let median = |env: &[(String, String)]| -> Result<(f64, f64)> {
        let mut runs = (0..5).map(|_| once(env)).collect::<Result<Vec<_>>>()?;
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(runs[2])
    };
    let first = once(env)?;
    let cached = median(env)?;
    let mut off = env.to_vec();
    off.push(("NIMIFY_MODEL_CACHE".into(), "false".into()));
    let off = median(&off)?;
    let cell = |(ms, mb): (f64, f64)| format!("{ms:.0} ms, {mb:.0} MB");
    Ok(format!("| {name} | {} | {} | {} |", cell(first), cell(cached), cell(off)))
}

/// Starts the server pinned to core 0 and returns it with the time from spawn to ready.
fn start_server(
    bin: &Path,
    model: &Path,
    port: u16,
    grpc_port: u16,
    env: &[(String, String)],
) -> Result<(Child, Duration)> {
    let start = Instant::now();
    let child = Command::new("taskset")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["-c", "0"])
        .arg(bin)
        .args(["nimify", "serve"])
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--grpc-port", &grpc_port.to_string()])
        .args(["--intra-threads", "1", "--inter-threads", "1"])
        .env("RUST_LOG", "warn")
        .env("NIMIFY_SHUTDOWN_DELAY_MS", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    while start.elapsed() < Duration::from_secs(60) {
        if ready(port) {
            return Ok((child, start.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("server on port {port} not ready after 60 s")
}

fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// Peak resident set (VmHWM) in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Wrk {
    requests: u64,
    rps: f64,
    p50: String,
    p99: String,
    errors: u64,
}

fn parse_wrk(out: &str) -> Option<Wrk> {
    let field = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()));
    let rps = field("Requests/sec:")?.parse().ok()?;
    let p50 = field("50%")?;
    let p99 = field("99%")?;
    let non_2xx: u64 = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let socket: u64 = field("Socket errors:")
        .map(|v| v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    let requests = out.lines().find_map(|l| l.trim().split_once(" requests in ")?.0.trim().parse().ok())?;
    Some(Wrk { requests, rps, p50, p99, errors: non_2xx + socket })
}

fn json_number(s: &str, key: &str) -> Option<f64> {
    let rest = &s[s.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start_matches([':', ' ']);
    rest.split([',', '}']).next()?.trim().parse().ok()
}

/// Times `cargo build` of a one-file crate after touching its source, for a tiny and a 1 GiB model.
fn macro_expansion(sh: &Shell, cargo: &str) -> Result<()> {
    let root = crate::root();
    let big = root.join("target/bench-models/big-1gib.onnx");
    if !big.is_file() {
        // Criterion's test mode runs the signature benchmark once, which writes the model.
        cmd!(sh, "{cargo} bench -p nimify-model --bench signature -- --test").run()?;
    }
    let runtime = root.join("runtime");
    let target = root.join("target");
    for (label, model) in [("tiny (289 B)", root.join("tests/models/mlp.onnx")), ("1 GiB", big)] {
        let dir = root.join("target/macro-bench");
        std::fs::create_dir_all(dir.join("src"))?;
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[package]\nname = \"macrobench\"\nversion = \"0.1.0\"\nedition = \"2024\"\n[workspace]\n[dependencies]\nnimify = {{ path = {:?} }}\n",
                runtime.display().to_string()
            ),
        )?;
        std::fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))?;
        let main = format!(
            "//! bench\n#[nimify::nimify(model = {:?})]\npub struct M;\nfn main() {{ let _ = std::mem::size_of::<MInput>(); }}\n",
            model.display().to_string()
        );
        std::fs::write(dir.join("src/main.rs"), &main)?;
        let _guard = sh.push_dir(&dir);
        cmd!(sh, "{cargo} build -q").env("CARGO_TARGET_DIR", &target).run()?;
        let mut times = Vec::new();
        for _ in 0..5 {
            std::fs::write(dir.join("src/main.rs"), &main)?;
            let start = Instant::now();
            cmd!(sh, "{cargo} build -q").env("CARGO_TARGET_DIR", &target).run()?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        println!(
            "macro on a {label} model: debug rebuild median {:.2} s (min {:.2}, max {:.2})",
            times[2], times[0], times[4]
        );
    }
    Ok(())
}
