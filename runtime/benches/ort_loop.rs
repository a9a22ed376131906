//! The in-process baseline for `cargo xtask bench serve`: one session with the server's default
//! options, batch-1 zeros, run in a loop for a fixed time. Prints one JSON line.
//!
//! `NIMIFY_BENCH_MODEL=x.onnx NIMIFY_BENCH_SECONDS=5 NIMIFY_BENCH_THREADS=1 cargo bench -p nimify --bench ort_loop`

use std::time::{Duration, Instant};

use nimify::__bench::{Tensor, environment, open_session, run_session};
use nimify::config::SessionConfig;
use nimify_model::Dim;

fn main() {
    let Ok(model) = std::env::var("NIMIFY_BENCH_MODEL") else {
        eprintln!("ort_loop: set NIMIFY_BENCH_MODEL to run (used by `cargo xtask bench serve`)");
        return;
    };
    let seconds: f64 = std::env::var("NIMIFY_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let threads: usize = std::env::var("NIMIFY_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let info = nimify_model::read_model(&model).expect("read model");
    let env = environment().expect("ONNX Runtime");
    let config = SessionConfig { intra_threads: threads, inter_threads: threads, ..SessionConfig::default() };
    let mut session = open_session(env, std::path::Path::new(&model), &config).expect("session");
    let names: Vec<String> = info.inputs.iter().map(|i| i.name.clone()).collect();
    let inputs: Vec<Tensor> = info
        .inputs
        .iter()
        .map(|i| {
            let (elem, dims) = i.ty.as_tensor().expect("tensor input");
            let shape =
                dims.unwrap_or(&[]).iter().map(|d| if let Dim::Fixed(n) = d { *n as usize } else { 1 }).collect();
            Tensor::zeros(elem.expect("element type"), shape).expect("zeros")
        })
        .collect();
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    while Instant::now() < end {
        let t = Instant::now();
        run_session(&mut session, &names, inputs.clone(), None, None).expect("run");
        latencies.push(t.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    println!(
        "{{\"runs\": {}, \"runs_per_sec\": {:.1}, \"p50_us\": {:.1}, \"p99_us\": {:.1}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
}
