//! Typed services end to end, in process: the generated types round-trip through the same
//! queue and metrics as V2, wrong shapes and types are 4xx naming the tensor, the OpenAPI
//! document carries the exact schemas, and a model with another signature refuses to start.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimify::__private::TypedModel;
use nimify::ServerBuilder;
use nimify_tests::{Iris, IrisInput, Mlp, MlpInput, MlpOutput, MultiIo, MultiIoInput, OddNames, OddNamesInput};
use serde_json::{Value, json};
use tower::ServiceExt;

fn app() -> Router {
    let (_, router) = ServerBuilder::default()
        .typed::<Mlp>()
        .typed::<MultiIo>()
        .typed::<OddNames>()
        .typed::<Iris>()
        .typed::<nimify_tests::Wide>()
        .build()
        .expect("typed models load (is ONNX Runtime installed? run `cargo nimify ort install`)");
    router
}

async fn call(router: &Router, method: &str, uri: &str, body: String) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(uri).body(Body::from(body)).expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn typed_and_v2_answers_agree() {
    let router = app();
    let input = MlpInput { x: vec![[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]] };
    let (status, typed) =
        call(&router, "POST", "/v1/models/mlp/predict", serde_json::to_string(&input).expect("json")).await;
    assert_eq!(status, StatusCode::OK, "{typed}");
    let typed: MlpOutput = serde_json::from_value(typed).expect("typed output");
    let v2 = json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0, 0.5, -1.0, 0.0, 2.0]}]});
    let (status, v2) = call(&router, "POST", "/v2/models/mlp/infer", v2.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let flat: Vec<f32> = typed.probs.iter().flatten().copied().collect();
    let v2_probs: Vec<f32> = serde_json::from_value(v2["outputs"][0]["data"].clone()).expect("v2 data");
    assert_eq!(flat, v2_probs);
    assert_eq!(typed.probs.len(), 2);
}

#[tokio::test]
async fn several_inputs_scalars_and_odd_names() {
    let router = app();
    let input = MultiIoInput { features: vec![vec![1.0, 2.0], vec![3.0, 4.0]], ids: vec![1, 2], threshold: 4.0 };
    let (status, out) =
        call(&router, "POST", "/v1/models/multi/predict", serde_json::to_string(&input).expect("json")).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["total"], json!([3.0, 14.0]));
    assert_eq!(out["above"], json!([false, true]));
    assert_eq!(out["scaled"], json!([[1.0, 2.0], [6.0, 8.0]]));
    assert_eq!(out["features_shape"], json!([2, 2]));

    let odd = OddNamesInput { input_0_x_y: vec![vec![[1.0, 2.0, 3.0]]], it_s_quoted: vec![vec![7, 8]] };
    let body = serde_json::to_value(&odd).expect("json");
    assert!(body.get("input/0:x.y").is_some() && body.get("it's \"quoted\"").is_some(), "{body}");
    let (status, out) = call(&router, "POST", "/v1/models/odd_names/predict", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["with space.v2"], json!([[7, 8]]));
}

#[tokio::test]
async fn zipmap_rows_are_typed_maps() {
    let router = app();
    let input = IrisInput { x: vec![[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]] };
    let (status, out) =
        call(&router, "POST", "/v1/models/zipmap/predict", serde_json::to_string(&input).expect("json")).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let out: nimify_tests::IrisOutput = serde_json::from_value(out).expect("typed output");
    assert_eq!(out.output_label, vec![0, 2]);
    assert_eq!(out.output_probability.len(), 2);
    let sum: f32 = out.output_probability[0].values().sum();
    assert!((sum - 1.0).abs() < 1e-4, "{sum}");
    assert!(out.output_probability[0][&0] > 0.9);
}

#[tokio::test]
async fn wrong_shapes_and_types_are_422_naming_the_tensor() {
    let router = app();
    for (body, needles) in [
        (json!({"x": [[1.0, 2.0, 3.0]]}), vec!["x", "invalid length 3"]),
        (json!({"x": [[1.0, 2.0, "three", 4.0]]}), vec!["x", "invalid type"]),
        (json!({}), vec!["missing field `x`"]),
        (json!({"x": [[1, 2, 3, 4]], "y": 1}), vec!["unknown field `y`"]),
    ] {
        let (status, err) = call(&router, "POST", "/v1/models/mlp/predict", body.to_string()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {err}");
        let msg = err["error"].as_str().expect("error");
        for n in needles {
            assert!(msg.contains(n), "{n:?} not in {msg:?}");
        }
    }
    // A symbolic dim must agree across inputs.
    let bad = json!({"features": [[1.0, 2.0], [3.0, 4.0]], "ids": [1, 2, 3], "threshold": 1.0});
    let (status, err) = call(&router, "POST", "/v1/models/multi/predict", bad.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(err["error"].as_str().expect("error").contains("dim `batch` is 3"), "{err}");
    // Ragged rows cannot make a tensor.
    let ragged = json!({"features": [[1.0, 2.0], [3.0]], "ids": [1, 2], "threshold": 1.0});
    let (status, err) = call(&router, "POST", "/v1/models/multi/predict", ragged.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert!(err["error"].as_str().expect("error").contains("ragged"), "{err}");
    let (status, err) = call(&router, "POST", "/v1/models/mlp/predict", "{\"x\": [".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
}

#[tokio::test]
async fn openapi_has_exact_schemas() {
    let router = app();
    let (status, doc) = call(&router, "GET", "/openapi.json", String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/models/mlp/predict"]["post"].is_object());
    let schemas = &doc["components"]["schemas"];
    insta::assert_json_snapshot!("mlp_input_schema", schemas["MlpInput"]);
    insta::assert_json_snapshot!("iris_output_schema", schemas["IrisOutput"]);
    insta::assert_json_snapshot!("multi_io_input_schema", schemas["MultiIoInput"]);
}

#[test]
fn a_model_with_another_signature_refuses_to_start() {
    struct Swapped;
    impl TypedModel for Swapped {
        type Input = MlpInput;
        type Output = MlpOutput;
        const NAME: &'static str = "swapped";
        // The MLP's compiled-in signature, but the file on disk is another model.
        const MODEL_PATH: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/fixed.onnx");
        fn signature() -> nimify::__private::Signature {
            Mlp::signature()
        }
    }
    let err = ServerBuilder::default().typed::<Swapped>().build().expect_err("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("signature differs"), "{msg}");
    assert!(msg.contains("\"x\": float[batch, 4]") && msg.contains("\"image\": float[1, 2, 3]"), "{msg}");
}

#[tokio::test]
async fn a_model_that_lies_about_an_output_dim_is_served_with_the_override() {
    let (_, router) = ServerBuilder::default().typed::<nimify_tests::Lying>().build().expect("loads with the override");
    let input = nimify_tests::LyingInput { x: vec![[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]] };
    let (status, out) =
        call(&router, "POST", "/v1/models/lying_shape/predict", serde_json::to_string(&input).expect("json")).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    // x times [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]].
    let out: nimify_tests::LyingOutput = serde_json::from_value(out).expect("typed output");
    assert_eq!(out.y, vec![[0.0, 1.0, 2.0], [18.0, 20.0, 22.0]]);
    // Metadata and input checks see the declared-by-override dims too.
    let (_, meta) = call(&router, "GET", "/v2/models/lying_shape", String::new()).await;
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 3]), "{meta}");
    assert_eq!(
        nimify_tests::Lying::signature().dims_overrides,
        vec![(
            "y".to_string(),
            vec![nimify::__private::Dim::Symbolic("batch".into()), nimify::__private::Dim::Fixed(3)]
        )]
    );
}

#[test]
fn a_typed_model_whose_outputs_break_their_declared_dims_refuses_to_start() {
    let err = ServerBuilder::default().typed::<nimify_tests::LyingAsDeclared>().build().expect_err("must refuse");
    let msg = err.to_string();
    assert!(msg.contains("lying_shape.onnx") && msg.contains("declares output shapes it does not produce"), "{msg}");
    assert!(msg.contains("output \"y\" is declared [batch, 1] but warm-up produced [1, 3]"), "{msg}");
    assert!(msg.contains("dims(\"y\" = [\"batch\", 3])"), "{msg}");
}

#[test]
fn a_dims_override_for_a_tensor_the_file_lacks_refuses_to_start() {
    struct Renamed;
    impl TypedModel for Renamed {
        type Input = nimify_tests::LyingInput;
        type Output = nimify_tests::LyingOutput;
        const NAME: &'static str = "renamed";
        // Compiled against lying_shape.onnx with an override; the file on disk is the MLP.
        const MODEL_PATH: &'static str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/mlp.onnx");
        fn signature() -> nimify::__private::Signature {
            nimify_tests::Lying::signature()
        }
    }
    let msg = ServerBuilder::default().typed::<Renamed>().build().expect_err("must refuse").to_string();
    assert!(msg.contains("cannot override the dims of \"y\": the model has no such input or output"), "{msg}");
}

#[tokio::test]
async fn fixed_dims_above_32_round_trip() {
    let router = app();
    let row: Vec<f32> = (0..40).map(|i| i as f32).collect();
    let input = nimify_tests::WideInput { row: vec![nimify::typed::Array::try_from(row.clone()).expect("40 items")] };
    let (status, out) =
        call(&router, "POST", "/v1/models/wide/predict", serde_json::to_string(&input).expect("json")).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let out: nimify_tests::WideOutput = serde_json::from_value(out).expect("typed");
    assert_eq!(out.scaled[0].iter().copied().collect::<Vec<f32>>(), row.iter().map(|v| v * 0.5).collect::<Vec<f32>>());
    let (status, err) =
        call(&router, "POST", "/v1/models/wide/predict", json!({"row": [[1.0, 2.0]]}).to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(err["error"].as_str().expect("error").contains("expected an array of length 40"), "{err}");
}

#[tokio::test]
async fn a_compiled_in_reference_measures_drift_and_the_configuration_replaces_it() {
    let mut config = nimify::Config::default();
    config.drift.sample_rate = 1.0;
    let (_, router) = ServerBuilder::new(config.clone()).typed::<nimify_tests::Tabular>().build().expect("loads");
    let x: Vec<f32> = (0..60).map(|i| (i % 7) as f32 * 0.3 - 1.0).collect();
    let body = json!({"inputs": [
        {"name": "x", "shape": [10, 6], "datatype": "FP32", "data": x},
        {"name": "segment", "shape": [10, 1], "datatype": "INT64", "data": [1, 2, 3, 1, 2, 3, 1, 2, 3, 9]}
    ]});
    let (status, out) = call(&router, "POST", "/v2/models/tabular/infer", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let (status, report) = call(&router, "GET", "/v2/models/tabular/drift", String::new()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rows"], 10);
    assert!(
        report["reference"].as_str().is_some_and(|r| r.ends_with("tabular.profile.json (compiled in)")),
        "{report}"
    );
    let segment = &report["tensors"][1];
    assert_eq!(segment["name"], "segment");
    assert_eq!(segment["features"][0]["top_buckets"][0]["bucket"], "other");
    // A profile named by the configuration replaces the compiled-in one, and is checked the same.
    let broken = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(broken.path(), "{}").expect("write");
    config.drift.reference = Some(broken.path().display().to_string());
    let err = ServerBuilder::new(config).typed::<nimify_tests::Tabular>().build().expect_err("must refuse");
    assert!(err.to_string().contains("missing field `schema`"), "{err}");
}
