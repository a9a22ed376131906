//! Metric names, types and label sets are a contract with dashboards and autoscalers: snapshot
//! them (values vary, so they are left out).

use std::path::PathBuf;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use nimify::{ModelOptions, ServerBuilder};
use tower::ServiceExt;

#[tokio::test]
async fn metric_families_match_snapshot() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models/mlp.onnx");
    let (_, router) = ServerBuilder::default().model(ModelOptions::new(path)).build().expect("load mlp");
    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let resp = router
        .clone()
        .oneshot(Request::post("/v2/models/mlp/infer").body(Body::from(body)).expect("req"))
        .await
        .expect("infer");
    assert_eq!(resp.status(), 200);
    let resp = router.oneshot(Request::get("/metrics").body(Body::empty()).expect("req")).await.expect("metrics");
    assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(resp.into_body().collect().await.expect("body").to_bytes().to_vec()).expect("utf8");
    let mut families: Vec<String> = text.lines().filter(|l| l.starts_with("# TYPE")).map(String::from).collect();
    let mut series: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .filter(|s| !s.contains("_bucket{"))
        .map(|s| s.replace(env!("CARGO_PKG_VERSION"), "<version>"))
        .collect();
    families.sort();
    series.sort();
    insta::assert_snapshot!("families", families.join("\n"));
    insta::assert_snapshot!("series", series.join("\n"));
}
