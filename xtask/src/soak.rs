//! `cargo xtask soak [--minutes N]`: the release server under open-loop load at about twice its
//! capacity for several minutes, with the in-flight cap on. It reports (never asserts) what an
//! operator needs to trust overload: resident memory over time (flat), errors other than 503
//! (none), and the latency of admitted requests (bounded: p99 near in-flight cap x service time).
//!
//! The server is pinned to core 0 with one intra-op thread and serves tests/models/slow.onnx with
//! a Loop trip count sized at start to about 2 ms of work; the load generator (here, on the other
//! cores) sends requests on a fixed schedule whatever the answers, and measures each latency from
//! its scheduled start, so a slow server cannot hide its delay (no coordinated omission).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

const IN_FLIGHT: usize = 32;
const WORKERS: usize = 256;

pub fn run(args: &[&str]) -> Result<()> {
    let minutes: f64 = match args {
        [] => 3.0,
        ["--minutes", n] => n.parse().context("--minutes takes a number")?,
        _ => bail!("cargo xtask soak [--minutes N]"),
    };
    let sh = Shell::new()?;
    let root = crate::root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    cmd!(sh, "{cargo} build -q --release -p cargo-nimify").run()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server = Command::new("taskset")
        .args(["-c", "0"])
        .arg(root.join("target/release/cargo-nimify"))
        .args(["nimify", "serve"])
        .arg(root.join("tests/models/slow.onnx"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--intra-threads", "1", "--batching", "false"])
        .args(["--max-in-flight", &IN_FLIGHT.to_string(), "--shutdown-delay-ms", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting the server")?;
    let result = soak(&mut server, port, minutes);
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
    result
}

fn soak(server: &mut Child, port: u16, minutes: f64) -> Result<()> {
    let address = format!("127.0.0.1:{port}");
    wait_ready(&address)?;
    // Size the work to about 2 ms a request, measured now.
    let mut trips = 1000u64;
    let mut conn = Conn::new(&address);
    let per_request = loop {
        let start = Instant::now();
        for _ in 0..20 {
            let status = conn.post(&body(trips))?;
            if status != 200 {
                bail!("sizing request answered {status}");
            }
        }
        let each = start.elapsed() / 20;
        if each >= Duration::from_micros(1500) || trips > 100_000_000 {
            break each;
        }
        trips = (trips as f64 * (2000.0 / each.as_micros().max(1) as f64).clamp(1.5, 50.0)) as u64;
    };
    let payload = Arc::new(body(trips));
    // Capacity: closed loop, eight clients, five seconds.
    let capacity = closed_loop(&address, &payload, 8, Duration::from_secs(5))?;
    let rate = 2.0 * capacity;
    let duration = Duration::from_secs_f64(minutes * 60.0);
    eprintln!(
        "soak: {trips} steps = {:.2} ms a request; capacity {capacity:.0} requests/s; offering {rate:.0}/s for {minutes} min",
        per_request.as_secs_f64() * 1000.0
    );

    let (jobs, queue) = channel::<Instant>();
    let queue = Arc::new(Mutex::new(queue));
    let results = Arc::new(Mutex::new(Vec::<(u16, Duration, Instant)>::with_capacity(
        (rate * duration.as_secs_f64()) as usize + 1024,
    )));
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (queue, results, payload, address) =
                (Arc::clone(&queue), Arc::clone(&results), Arc::clone(&payload), address.clone());
            std::thread::spawn(move || worker(&address, &queue, &results, &payload))
        })
        .collect();
    let pid = server.id();
    let start = Instant::now();
    let mut rss = Vec::new();
    let mut next_sample = start;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent = 0u64;
    while start.elapsed() < duration {
        let due = start + interval.mul_f64(sent as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_millis(1)));
            continue;
        }
        let _ = jobs.send(due);
        sent += 1;
        if now >= next_sample {
            rss.push((now - start, rss_kib(pid, "VmRSS")));
            next_sample += Duration::from_secs(1);
        }
    }
    drop(jobs);
    for w in workers {
        let _ = w.join();
    }
    let results = results.lock().map_err(|_| anyhow::anyhow!("results poisoned"))?;
    report(&results, sent, rate, capacity, duration, &rss, rss_kib(pid, "VmHWM"));
    if server.try_wait()?.is_some() {
        bail!("the server exited during the soak");
    }
    Ok(())
}

fn worker(
    address: &str,
    queue: &Mutex<Receiver<Instant>>,
    results: &Mutex<Vec<(u16, Duration, Instant)>>,
    payload: &[u8],
) {
    let mut conn = Conn::new(address);
    loop {
        let due = match queue.lock().map(|q| q.recv()) {
            Ok(Ok(due)) => due,
            _ => return,
        };
        let status = conn.post(payload).unwrap_or(0);
        let done = Instant::now();
        if let Ok(mut r) = results.lock() {
            r.push((status, done - due, done));
        }
    }
}

fn closed_loop(address: &str, payload: &Arc<Vec<u8>>, clients: usize, for_: Duration) -> Result<f64> {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (payload, address) = (Arc::clone(payload), address.to_string());
            std::thread::spawn(move || {
                let mut conn = Conn::new(&address);
                let mut ok = 0u64;
                while start.elapsed() < for_ {
                    if conn.post(&payload).is_ok_and(|s| s == 200) {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let ok: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    Ok(ok as f64 / start.elapsed().as_secs_f64())
}

fn report(
    results: &[(u16, Duration, Instant)],
    sent: u64,
    rate: f64,
    capacity: f64,
    duration: Duration,
    rss: &[(Duration, u64)],
    peak_kib: u64,
) {
    let mut admitted: Vec<Duration> = results.iter().filter(|(s, _, _)| *s == 200).map(|(_, d, _)| *d).collect();
    admitted.sort();
    let refused = results.iter().filter(|(s, _, _)| *s == 503).count();
    let other = results.iter().filter(|(s, _, _)| *s != 200 && *s != 503).count();
    let pct = |p: f64| {
        admitted
            .get(((admitted.len() as f64 * p) as usize).min(admitted.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let mib = |k: u64| k as f64 / 1024.0;
    let window = |from: f64, to: f64| {
        let xs: Vec<u64> =
            rss.iter().filter(|(t, _)| t.as_secs_f64() >= from && t.as_secs_f64() < to).map(|(_, k)| *k).collect();
        xs.iter().sum::<u64>() as f64 / xs.len().max(1) as f64 / 1024.0
    };
    let secs = duration.as_secs_f64();
    println!("\n| figure | value |\n|---|---|");
    println!("| capacity (closed loop, 8 clients) | {capacity:.0} requests/s |");
    println!("| offered (open loop) | {rate:.0} requests/s, {sent} requests in {secs:.0} s |");
    println!("| admitted (200) | {} ({:.0}/s) |", admitted.len(), admitted.len() as f64 / secs);
    println!("| refused (503) | {refused} |");
    println!("| other answers or errors | {other} |");
    println!(
        "| admitted latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        pct(0.5),
        pct(0.99),
        admitted.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!(
        "| RSS first 30 s / last 30 s (mean) | {:.1} / {:.1} MiB |",
        window(0.0, 30.0),
        window(secs - 30.0, secs + 1.0)
    );
    println!(
        "| RSS min / max over the run | {:.1} / {:.1} MiB; peak (VmHWM) {:.1} MiB |",
        mib(rss.iter().map(|r| r.1).min().unwrap_or(0)),
        mib(rss.iter().map(|r| r.1).max().unwrap_or(0)),
        mib(peak_kib)
    );
}

fn body(trips: u64) -> Vec<u8> {
    format!(r#"{{"inputs":[{{"name":"x","shape":[1,8],"datatype":"FP32","data":[1,1,1,1,1,1,1,1]}},{{"name":"trips","shape":[1,1],"datatype":"INT64","data":[{trips}]}}]}}"#).into_bytes()
}

fn wait_ready(address: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(mut s) = TcpStream::connect(address) {
            let _ = s.write_all(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the server at {address} was not ready within 60 s")
}

/// One kept-alive connection, reopened when it breaks.
struct Conn {
    address: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(address: &str) -> Self {
        Self { address: address.to_string(), stream: None }
    }

    /// POSTs `body` to the slow model's infer route; the status, or an error when the connection
    /// failed (counted as status 0 by the caller).
    fn post(&mut self, body: &[u8]) -> Result<u16> {
        let result = self.try_post(body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_post(&mut self, body: &[u8]) -> Result<u16> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.address)?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::new(s));
        }
        let reader = self.stream.as_mut().context("connected")?;
        let head = format!(
            "POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        reader.get_mut().write_all(head.as_bytes())?;
        reader.get_mut().write_all(body)?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).context("status line")?.parse()?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            } else if lower == "connection: close" {
                close = true;
            }
        }
        let mut sink = vec![0u8; length];
        reader.read_exact(&mut sink)?;
        if close {
            self.stream = None;
        }
        Ok(status)
    }
}

/// A `/proc/PID/status` figure in KiB.
fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
