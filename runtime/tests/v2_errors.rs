//! Every kind of bad request gets its status code and a JSON error naming the problem, and a
//! good request right after it still succeeds. Drives the real router in process.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use nimify::{ModelOptions, ServerBuilder};
use serde_json::{Value, json};
use tower::ServiceExt;

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models").join(name)
}

fn router() -> Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER
        .get_or_init(|| {
            let (_, router) = ServerBuilder::default()
                .model(ModelOptions::new(model("mlp.onnx")))
                .model(ModelOptions::new(model("strings.onnx")))
                .model(ModelOptions::new(model("bf16.onnx")))
                .model(ModelOptions::new(model("multi_io.onnx")))
                .model(ModelOptions::new(model("nonfinite.onnx")))
                .model(ModelOptions::new(model("odd_length.onnx")))
                .max_body(64 * 1024)
                .build()
                .expect("models load (is ONNX Runtime installed? run `cargo nimify ort install`)");
            router
        })
        .clone()
}

async fn send(req: Request<Body>) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
    let resp = router().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, body, headers)
}

fn post(uri: &str, body: impl Into<Body>, header_len: Option<usize>) -> Request<Body> {
    let mut b = Request::post(uri);
    if let Some(n) = header_len {
        b = b.header("inference-header-content-length", n);
    }
    b.body(body.into()).expect("request")
}

fn good() -> Value {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]})
}

/// Sends `req`, expects `status` and an error mentioning each needle, then a good request.
async fn expect_error(req: Request<Body>, status: StatusCode, needles: &[&str]) {
    let (got, body, _) = send(req).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(got, status, "{text}");
    let err: Value = serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let msg = err["error"].as_str().unwrap_or_else(|| panic!("no error field: {text}"));
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in {msg:?}");
    }
    let (ok, body, _) = send(post("/v2/models/mlp/infer", good().to_string(), None)).await;
    assert_eq!(ok, StatusCode::OK, "good request after the bad one failed: {}", String::from_utf8_lossy(&body));
}

fn with_input(f: impl FnOnce(&mut Value)) -> String {
    let mut v = good();
    f(&mut v["inputs"][0]);
    v.to_string()
}

#[tokio::test]
async fn malformed_json() {
    expect_error(
        post("/v2/models/mlp/infer", "{\"inputs\": [", None),
        StatusCode::BAD_REQUEST,
        &["malformed inference request JSON"],
    )
    .await;
    expect_error(
        post("/v2/models/mlp/infer", "{\"inputs\": 3}", None),
        StatusCode::BAD_REQUEST,
        &["malformed", "inputs"],
    )
    .await;
}

/// A binary request: JSON header naming `binary_data_size`, then the bytes.
fn binary_request(declared: usize, payload: &[u8]) -> (Vec<u8>, usize) {
    let header = json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": declared}}]}).to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(payload);
    (body, header.len())
}

#[tokio::test]
async fn binary_framing_errors() {
    let floats: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|f| f.to_le_bytes()).collect();
    let (body, n) = binary_request(16, &floats[..10]);
    expect_error(
        post("/v2/models/mlp/infer", body, Some(n)),
        StatusCode::BAD_REQUEST,
        &["truncated binary payload", "\"x\"", "16"],
    )
    .await;

    let (body, n) = binary_request(16, &floats);
    let len = body.len();
    expect_error(
        post("/v2/models/mlp/infer", body, Some(len + 5)),
        StatusCode::BAD_REQUEST,
        &["Inference-Header-Content-Length", &(len + 5).to_string()],
    )
    .await;
    let _ = n;

    let (body, n) = binary_request(16, &floats);
    let mut extra = body.clone();
    extra.extend_from_slice(&[0, 0, 0]);
    expect_error(
        post("/v2/models/mlp/infer", extra, Some(n)),
        StatusCode::BAD_REQUEST,
        &["3 bytes", "no input claims"],
    )
    .await;

    expect_error(post("/v2/models/mlp/infer", body.clone(), None), StatusCode::BAD_REQUEST, &["malformed"]).await;
    let (ok, _, _) = send(post("/v2/models/mlp/infer", body, Some(n))).await;
    assert_eq!(ok, StatusCode::OK);

    // BYTES elements with a length prefix longer than what follows.
    let header =
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]})
            .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(&[9, 0, 0, 0, b'h', b'i']);
    expect_error(
        post("/v2/models/strings/infer", body, Some(header.len())),
        StatusCode::BAD_REQUEST,
        &["BYTES element 0 declares 9 bytes"],
    )
    .await;
}

#[tokio::test]
async fn element_count_mismatch_in_binary() {
    let (body, n) = binary_request(12, &[0u8; 12]);
    expect_error(
        post("/v2/models/mlp/infer", body, Some(n)),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["\"x\"", "12 binary bytes", "needs 4"],
    )
    .await;
}

#[tokio::test]
async fn wrong_tensors() {
    let uri = "/v2/models/mlp/infer";
    expect_error(
        post(uri, with_input(|i| i["datatype"] = json!("FP64")), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["\"x\"", "FP64", "FP32"],
    )
    .await;
    expect_error(
        post(uri, with_input(|i| i["datatype"] = json!("FLOAT")), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["unknown datatype \"FLOAT\""],
    )
    .await;
    expect_error(
        post(
            uri,
            with_input(|i| {
                i["shape"] = json!([2, 2]);
            }),
            None,
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["\"x\"", "dim 1 is 2", "expects 4"],
    )
    .await;
    expect_error(
        post(uri, with_input(|i| i["shape"] = json!([4])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["rank 1", "rank 2"],
    )
    .await;
    expect_error(
        post(uri, with_input(|i| i["shape"] = json!([2, 4])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["needs 8 elements but 4 were sent"],
    )
    .await;
    expect_error(
        post(uri, with_input(|i| i["data"] = json!([1, 2, "three", 4])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["element 2", "FP32"],
    )
    .await;
    expect_error(
        post(uri, with_input(|i| i["name"] = json!("y")), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["unknown input \"y\"", "\"x\""],
    )
    .await;
    expect_error(
        post(uri, json!({"inputs": []}).to_string(), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["missing input \"x\""],
    )
    .await;
    let mut with_output = good();
    with_output["outputs"] = json!([{"name": "nope"}]);
    expect_error(
        post(uri, with_output.to_string(), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["unknown output \"nope\"", "\"probs\""],
    )
    .await;
    let disagree = json!({"inputs": [
        {"name": "features", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "ids", "shape": [3], "datatype": "INT32", "data": [1, 2, 3]},
        {"name": "threshold", "shape": [], "datatype": "FP32", "data": [1]}]});
    expect_error(
        post("/v2/models/multi_io/infer", disagree.to_string(), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["\"ids\"", "dim `batch` is 3", "\"features\" has 2"],
    )
    .await;
    expect_error(
        post(
            "/v2/models/bf16/infer",
            json!({"inputs": [{"name": "in_bf16", "shape": [1, 2], "datatype": "BF16", "data": [1.0, 2.0]}]})
                .to_string(),
            None,
        ),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["BF16 tensors travel only in binary"],
    )
    .await;
}

#[tokio::test]
async fn unknown_model_version_and_route() {
    expect_error(
        post("/v2/models/nope/infer", good().to_string(), None),
        StatusCode::NOT_FOUND,
        &["unknown model \"nope\"", "\"mlp\""],
    )
    .await;
    expect_error(
        post("/v2/models/mlp/versions/2/infer", good().to_string(), None),
        StatusCode::NOT_FOUND,
        &["unknown version \"2\""],
    )
    .await;
    expect_error(
        Request::get("/v2/models/nope").body(Body::empty()).expect("req"),
        StatusCode::NOT_FOUND,
        &["unknown model"],
    )
    .await;
    expect_error(
        Request::get("/v2/models/mlp/versions/7/config").body(Body::empty()).expect("req"),
        StatusCode::NOT_FOUND,
        &["unknown version"],
    )
    .await;
    expect_error(Request::get("/v3").body(Body::empty()).expect("req"), StatusCode::NOT_FOUND, &["no route for /v3"])
        .await;
    let (ok, _, _) = send(post("/v2/models/mlp/versions/1/infer", good().to_string(), None)).await;
    assert_eq!(ok, StatusCode::OK);
}

#[tokio::test]
async fn oversized_body() {
    let big = vec![b' '; 65 * 1024];
    expect_error(post("/v2/models/mlp/infer", big, None), StatusCode::PAYLOAD_TOO_LARGE, &["65536 byte limit"]).await;
}

#[tokio::test]
async fn binary_response_framing() {
    let mut req = good();
    req["parameters"] = json!({"binary_data_output": true});
    req["outputs"] = json!([{"name": "logits"}, {"name": "probs", "parameters": {"binary_data": false}}]);
    let (status, body, headers) = send(post("/v2/models/mlp/infer", req.to_string(), None)).await;
    assert_eq!(status, StatusCode::OK);
    let n: usize = headers["inference-header-content-length"].to_str().expect("text").parse().expect("number");
    let header: Value = serde_json::from_slice(&body[..n]).expect("json header");
    assert_eq!(header["outputs"][0]["name"], "logits");
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 12);
    assert!(header["outputs"][0].get("data").is_none());
    assert_eq!(header["outputs"][1]["data"].as_array().map(Vec::len), Some(3));
    assert_eq!(body.len() - n, 12);
}

#[tokio::test]
async fn no_content_type_needed_and_id_echoed() {
    let mut req = good();
    req["id"] = json!("abc");
    let (status, body, headers) = send(post("/v2/models/mlp/infer", req.to_string(), None)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["id"], "abc");
    assert_eq!(v["model_name"], "mlp");
    assert_eq!(v["outputs"][0]["shape"], json!([1, 3]));
}

#[tokio::test]
async fn nested_data_must_nest_as_the_shape_does() {
    let nested = |data: Value| with_input(|i| i["data"] = data);
    expect_error(
        post("/v2/models/mlp/infer", nested(json!([[1], [2], [3], [4]])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["\"x\"", "nested data does not match shape [1, 4]", "data has 4 items where the shape needs 1"],
    )
    .await;
    expect_error(
        post("/v2/models/mlp/infer", nested(json!([[1, 2], [3, 4]])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["data has 2 items"],
    )
    .await;
    expect_error(
        post("/v2/models/mlp/infer", nested(json!([[[1], [2], [3], [4]]])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["data[0][0] nests deeper than the shape's 2 dims"],
    )
    .await;
    expect_error(
        post("/v2/models/mlp/infer", nested(json!([1, [2, 3, 4]])), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["data has 2 items"],
    )
    .await;
    // Nested exactly as the shape, or flat: both fine.
    for data in [json!([[1, 2, 3, 4]]), json!([1, 2, 3, 4])] {
        let (status, body, _) = send(post("/v2/models/mlp/infer", nested(data), None)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
}

fn nonfinite_request(x: &[f64], h: &[f64]) -> String {
    json!({"inputs": [
        {"name": "x", "shape": [x.len()], "datatype": "FP32", "data": x},
        {"name": "h", "shape": [h.len()], "datatype": "FP16", "data": h},
    ]})
    .to_string()
}

#[tokio::test]
async fn numbers_out_of_range_for_the_element_type() {
    let url = "/v2/models/nonfinite/infer";
    expect_error(
        post(url, nonfinite_request(&[3.5e38], &[1.0]), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["input \"x\": element 0 is 3.5e+38, which is out of range for FP32"],
    )
    .await;
    expect_error(
        post(url, nonfinite_request(&[1.0], &[70000.0]), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["input \"h\": element 0 is 70000.0, which is out of range for FP16"],
    )
    .await;
    // The largest finite values of each type still go through.
    let (status, body, _) = send(post(url, nonfinite_request(&[f64::from(f32::MAX)], &[65504.0]), None)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn non_finite_outputs_are_named_strings_in_json() {
    let (status, body, _) =
        send(post("/v2/models/nonfinite/infer", nonfinite_request(&[0.0, -1.0, 1.0], &[1.5, 0.0, -2.0]), None)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let out: Value = serde_json::from_slice(&body).expect("json");
    for o in out["outputs"].as_array().expect("outputs") {
        let want = if o["name"] == "h_out" { json!([1.5, 0.0, -2.0]) } else { json!(["-Infinity", "NaN", 0.0]) };
        assert_eq!(o["data"], want, "{}", o["name"]);
    }
}

#[tokio::test]
async fn float_inputs_take_the_names_of_non_finite_values() {
    let body = json!({"inputs": [
        {"name": "x", "shape": [3], "datatype": "FP32", "data": ["NaN", "Infinity", 1.0]},
        {"name": "h", "shape": [3], "datatype": "FP16", "data": ["-Infinity", "NaN", 2.0]},
    ]});
    let (status, body, _) = send(post("/v2/models/nonfinite/infer", body.to_string(), None)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let out: Value = serde_json::from_slice(&body).expect("json");
    let by_name =
        |n: &str| out["outputs"].as_array().and_then(|o| o.iter().find(|o| o["name"] == n)).map(|o| o["data"].clone());
    assert_eq!(by_name("log32"), Some(json!(["NaN", "Infinity", 0.0])));
    assert_eq!(by_name("h_out"), Some(json!(["-Infinity", "NaN", 2.0])));
    // Other strings are still not numbers.
    let bad = json!({"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": ["inf"]},
        {"name": "h", "shape": [1], "datatype": "FP16", "data": [1.0]},
    ]});
    expect_error(
        post("/v2/models/nonfinite/infer", bad.to_string(), None),
        StatusCode::UNPROCESSABLE_ENTITY,
        &["element 0 is \"inf\""],
    )
    .await;
}

#[tokio::test]
async fn an_output_asked_for_twice_is_a_bad_request() {
    let body =
        json!({"inputs": good()["inputs"], "outputs": [{"name": "probs"}, {"name": "logits"}, {"name": "probs"}]});
    expect_error(
        post("/v2/models/mlp/infer", body.to_string(), None),
        StatusCode::BAD_REQUEST,
        &["output \"probs\" is asked for more than once"],
    )
    .await;
}

#[tokio::test]
async fn onnx_runtime_failures_do_not_show_its_internals() {
    // odd_length reshapes `x: [n]` to [2, -1]: ONNX Runtime refuses an odd n while running.
    let body = json!({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (status, body, _) = send(post("/v2/models/odd_length/infer", body.to_string(), None)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let msg = serde_json::from_slice::<Value>(&body).expect("json")["error"].as_str().expect("error").to_string();
    assert!(
        msg.starts_with("inference failed: ") && msg.contains("Reshape") && msg.contains("cannot be reshaped"),
        "{msg}"
    );
    for internal in ["onnxruntime_src", ".h:", "::"] {
        assert!(!msg.contains(internal), "{internal:?} in {msg:?}");
    }
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let (status, body, headers) =
        send(Request::get("/v2/models/mlp/infer").body(Body::empty()).expect("request")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
    let err: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    assert_eq!(err["error"], "GET is not allowed on /v2/models/mlp/infer; the Allow header lists the methods that are");
    let (status, _, headers) = send(post("/v2/health/ready", "", None)).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(headers.get("allow").is_some_and(|v| v.to_str().unwrap_or("").contains("GET")));
}
