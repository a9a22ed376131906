//! Short requests are served on the async runtime's own threads, merged as the batcher merges
//! queued requests, without a worker thread's hand-offs. On a one-thread runtime every request
//! readable at once joins the same round, so what merges is exact; `inline_below_us` is set far
//! above any run's length, so which path serves does not depend on the CPU's speed either.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimify::{Config, ModelOptions, ServerBuilder};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tower::ServiceExt;

fn router(config: &str) -> Router {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models/mlp.onnx");
    let config = Config::from_toml(config).expect("config");
    ServerBuilder::new(config)
        .model(ModelOptions::new(model))
        .build()
        .expect("model loads (is ONNX Runtime installed? run `cargo nimify ort install`)")
        .1
}

fn request(rows: &[[f32; 4]]) -> Request<Body> {
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let body = json!({"inputs": [{"name": "x", "shape": [rows.len(), 4], "datatype": "FP32", "data": data}]});
    Request::post("/v2/models/mlp/infer").body(Body::from(body.to_string())).expect("request")
}

async fn send(router: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).expect("JSON answer"))
}

/// The first output's numbers.
fn numbers(answer: &Value) -> Vec<f64> {
    answer["outputs"][0]["data"].as_array().expect("data").iter().map(|v| v.as_f64().expect("number")).collect()
}

/// `name{model="mlp",...}` from the metrics page.
async fn metric(router: &Router, name: &str) -> f64 {
    let resp = router.clone().oneshot(Request::get("/metrics").body(Body::empty()).expect("request")).await;
    let body = resp.expect("infallible").into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("model=\"mlp\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for mlp in\n{text}"))
}

fn rows(i: usize, n: usize) -> Vec<[f32; 4]> {
    (0..n).map(|r| [i as f32, r as f32 * 0.5, -1.0, 0.25 * i as f32]).collect()
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * (1.0 + y.abs()))
}

#[tokio::test]
async fn requests_readable_together_run_as_one_execution_with_their_own_answers() {
    let router = router("[batching]\npolicy = \"fixed\"\nmax_batch_size = 64\ninline_below_us = 1000000000\n");
    // Each request alone first: the model's runs are measured short, and these are the answers
    // to compare with.
    let mut alone = Vec::new();
    for i in 0..12 {
        let (status, answer) = send(&router, request(&rows(i, 1 + i % 3))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        alone.push(numbers(&answer));
    }
    let execs = metric(&router, "nv_inference_exec_count").await;
    let mut set = JoinSet::new();
    for i in 0..12 {
        let router = router.clone();
        set.spawn(async move { (i, send(&router, request(&rows(i, 1 + i % 3))).await) });
    }
    let mut answered = 0;
    while let Some(done) = set.join_next().await {
        let (i, (status, answer)) = done.expect("task");
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(close(&numbers(&answer), &alone[i]), "request {i}: merged {answer} against alone {:?}", alone[i]);
        answered += 1;
    }
    assert_eq!(answered, 12);
    // 24 items in one execution: no queue delay was configured, and no worker thread took part.
    assert_eq!(metric(&router, "nv_inference_exec_count").await - execs, 1.0);
    assert_eq!(metric(&router, "nv_inference_pending_request_count").await, 0.0);
}

#[tokio::test]
async fn the_learned_policy_bounds_what_merges_on_the_runtime_threads_too() {
    // Learned: sizes are measured in rising order, so a round grows only one item past the
    // largest size measured; with nothing measured, twelve requests readable together run alone
    // before any merges.
    let router = router(
        "[batching]\npolicy = \"learned\"\npreferred_batch_size = [2]\nmax_batch_size = 8\ninline_below_us = 1000000000\n",
    );
    let (status, answer) = send(&router, request(&rows(0, 1))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let execs = metric(&router, "nv_inference_exec_count").await;
    let mut set = JoinSet::new();
    for i in 0..12 {
        let router = router.clone();
        set.spawn(async move { send(&router, request(&rows(i, 1))).await });
    }
    while let Some(done) = set.join_next().await {
        let (status, answer) = done.expect("task");
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    // Size 1 is measured three times (the first request was one), then the preferred size 2
    // caps every batch: 1 + 1 + 5 pairs = 7 executions, or 9 when this CPU measures pairs
    // dearer per item and the last four run alone.
    let ran = metric(&router, "nv_inference_exec_count").await - execs;
    assert!((7.0..=9.0).contains(&ran), "{ran} executions");
    assert_eq!(metric(&router, "nv_inference_count").await, 13.0);
}

#[tokio::test]
async fn a_model_told_to_wait_for_batches_keeps_its_worker() {
    // With a queue delay the batch waits for more requests on its worker thread: a request
    // that finds nothing else queued is answered only after the delay.
    let router = router(
        "[batching]\npolicy = \"fixed\"\nmax_queue_delay_us = 200000\nmax_batch_size = 4\ninline_below_us = 1000000000\n",
    );
    for i in 0..2 {
        let began = std::time::Instant::now();
        let (status, answer) = send(&router, request(&rows(i, 1))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(began.elapsed() >= std::time::Duration::from_millis(200), "answered before the queue delay");
    }
}

#[tokio::test]
async fn requests_beyond_the_queue_capacity_are_refused_on_the_runtime_threads_too() {
    // Twelve requests readable at once, four places: the first four gather and are answered,
    // the other eight are told to retry, and nothing stays pending.
    let router = router("[batching]\npolicy = \"fixed\"\nqueue_capacity = 4\ninline_below_us = 1000000000\n");
    let mut set = JoinSet::new();
    for i in 0..12 {
        let router = router.clone();
        set.spawn(async move { send(&router, request(&rows(i, 1))).await });
    }
    let mut statuses = Vec::new();
    while let Some(done) = set.join_next().await {
        let (status, answer) = done.expect("task");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let error = answer["error"].as_str().expect("error");
            assert!(error.contains("model mlp has a full queue"), "{error}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 4, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count(), 8, "{statuses:?}");
    assert_eq!(metric(&router, "nv_inference_pending_request_count").await, 0.0);
    assert_eq!(metric(&router, "nv_inference_count").await, 4.0);
}
