//! Custom processing with state, and a two-model pipeline served as one endpoint, against the
//! same computation done model by model over V2.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimify::ServerBuilder;
use nimify_tests::{IrisLabels, Mlp, MlpThenMulti, MultiIo};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app() -> Router {
    let labels = ["setosa", "versicolor", "virginica"].map(String::from).to_vec();
    let (_, router) = ServerBuilder::default()
        .service(IrisLabels { labels })
        .typed::<Mlp>()
        .typed::<MultiIo>()
        .endpoint("mlp-then-multi", MlpThenMulti)
        .build()
        .expect("models load");
    router
}

async fn post(router: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(Request::post(uri).body(Body::from(body.to_string())).expect("req"))
        .await
        .expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn custom_processing_uses_state_and_its_own_types() {
    let router = app();
    let (status, out) = post(
        &router,
        "/v1/models/iris-labels/predict",
        json!({"flowers": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["species"], json!(["setosa", "virginica"]));
    assert!(out["confidence"][0].as_f64().expect("number") > 0.9);
    let (status, err) = post(&router, "/v1/models/iris-labels/predict", json!({"flowers": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"], "flowers: send at least one flower");
    let (status, err) = post(&router, "/v1/models/iris-labels/predict", json!({"flowers": [[1.0]]})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"].as_str().expect("msg").contains("flowers"), "{err}");
    // The model is still served over V2 under the same name.
    let v2 = json!({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (status, out) = post(&router, "/v2/models/iris-labels/infer", v2).await;
    assert_eq!(status, StatusCode::OK, "{out}");
}

#[tokio::test]
async fn a_pipeline_matches_the_models_chained_by_hand() {
    let router = app();
    let x = json!([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, 0.0]]);
    let (status, piped) = post(&router, "/v1/models/mlp-then-multi/predict", json!({ "x": x })).await;
    assert_eq!(status, StatusCode::OK, "{piped}");

    let (_, first) = post(&router, "/v1/models/mlp/predict", json!({ "x": x })).await;
    let probs: Vec<Vec<f32>> = serde_json::from_value(first["probs"].clone()).expect("probs");
    let ids: Vec<i32> = probs
        .iter()
        .map(|p| p.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as i32 + 1)
        .collect();
    let (_, second) =
        post(&router, "/v1/models/multi/predict", json!({"features": probs, "ids": ids, "threshold": 0.5})).await;
    assert_eq!(piped["total"], second["total"]);
    assert_eq!(piped["above"], second["above"]);

    let (status, doc) = {
        let resp =
            router.clone().oneshot(Request::get("/openapi.json").body(Body::empty()).expect("req")).await.expect("ok");
        let s = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (s, serde_json::from_slice::<Value>(&bytes).expect("json"))
    };
    assert_eq!(status, StatusCode::OK);
    for name in ["FlowerRequest", "FlowerResponse", "PipelineRequest", "PipelineResponse"] {
        assert!(doc["components"]["schemas"][name].is_object(), "{name} missing");
    }
    assert_eq!(
        doc["paths"]["/v1/models/mlp-then-multi/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/PipelineRequest"
    );
}
