//! The example services' OpenAPI schemas, snapshot-tested (registered as their `main`s do).

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use nimify::ServerBuilder;
use serde_json::Value;
use tower::ServiceExt;

async fn schemas(builder: ServerBuilder) -> Value {
    let (_, router) = builder.build().expect("example models load");
    let resp = router.oneshot(Request::get("/openapi.json").body(Body::empty()).expect("req")).await.expect("ok");
    let doc: Value = serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes()).expect("json");
    let mut s = doc["components"]["schemas"].clone();
    // Keep the example's own schemas; the V2 ones are covered elsewhere.
    if let Some(map) = s.as_object_mut() {
        map.retain(|k, _| {
            !k.starts_with("Infer")
                && !k.starts_with("Model")
                && !k.starts_with("Config")
                && !matches!(
                    k.as_str(),
                    "ServerMetadata"
                        | "LiveResponse"
                        | "ReadyResponse"
                        | "MetadataTensor"
                        | "RequestInput"
                        | "RequestOutput"
                        | "ResponseOutput"
                        | "DynamicBatching"
                        | "ErrorBody"
                )
        });
    }
    s
}

#[tokio::test]
async fn example_schemas() {
    insta::assert_json_snapshot!(
        "iris",
        schemas(ServerBuilder::default().service(example_iris::Iris::default())).await
    );
    let pipeline = ServerBuilder::default()
        .typed::<example_pipeline::Scaler>()
        .typed::<example_pipeline::Scorer>()
        .endpoint("pipeline", example_pipeline::Pipeline);
    insta::assert_json_snapshot!("pipeline", schemas(pipeline).await);
    insta::assert_json_snapshot!(
        "recurrent",
        schemas(ServerBuilder::default().typed::<example_recurrent::Gru>()).await
    );
    insta::assert_json_snapshot!(
        "image",
        schemas(ServerBuilder::default().service(example_image::Classifier::default())).await
    );
    let text = example_text::Sentiment::new().expect("embedded tokenizer");
    insta::assert_json_snapshot!("text", schemas(ServerBuilder::default().service(text)).await);
}
