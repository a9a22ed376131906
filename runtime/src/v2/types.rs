//! KServe V2 / Open Inference Protocol message types (JSON part), with their OpenAPI schemas.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `POST /v2/models/{m}/infer` request header (the JSON part of a binary request).
#[derive(Debug, Deserialize, ToSchema)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters, e.g. `binary_data_output`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs to return (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestInput {
    /// Exact input name.
    pub name: String,
    /// Dimensions, outermost first.
    pub shape: Vec<i64>,
    /// `BOOL`, `UINT8`..`UINT64`, `INT8`..`INT64`, `FP16`, `BF16` (binary only), `FP32`, `FP64`, `BYTES`.
    pub datatype: String,
    /// `binary_data_size` when the data follows the JSON header.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Row-major elements, flat or nested.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<Value>,
}

/// One requested output.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RequestOutput {
    /// Exact output name.
    pub name: String,
    /// `binary_data: true` asks for the binary extension.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
}

/// The JSON part of an inference response.
#[derive(Debug, Serialize, ToSchema)]
pub struct InferResponse {
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// The request's `id`, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Output tensors.
    pub outputs: Vec<ResponseOutput>,
}

/// One output tensor; `data` is absent when it travels in binary (`binary_data_size` is set).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResponseOutput {
    /// Output name.
    pub name: String,
    /// KServe datatype.
    pub datatype: &'static str,
    /// Shape as ONNX Runtime returned it.
    pub shape: Vec<usize>,
    /// `binary_data_size` for binary outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Map<String, Value>>,
    /// Flat row-major elements for JSON outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub data: Option<super::codec::JsonData>,
}

/// `GET /v2`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerMetadata {
    /// Server name.
    pub name: String,
    /// Server version.
    pub version: String,
    /// Protocol extensions supported.
    pub extensions: Vec<String>,
}

/// `GET /v2/health/live`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LiveResponse {
    /// Always true while the process answers.
    pub live: bool,
}

/// `GET /v2/health/ready` and `/v2/models/{m}/ready`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyResponse {
    /// Whether requests will be served.
    pub ready: bool,
}

/// A tensor in model metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MetadataTensor {
    /// Exact name.
    pub name: String,
    /// KServe datatype.
    pub datatype: String,
    /// Dims; `-1` where not fixed.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{m}[/versions/{v}]`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// Available versions.
    pub versions: Vec<String>,
    /// Always `onnxruntime_onnx`.
    pub platform: String,
    /// Inputs.
    pub inputs: Vec<MetadataTensor>,
    /// Outputs.
    pub outputs: Vec<MetadataTensor>,
}

/// A tensor in Triton's model configuration.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigTensor {
    /// Exact name.
    pub name: String,
    /// Triton datatype, e.g. `TYPE_FP32`.
    pub data_type: String,
    /// Dims, without the batch dim when `max_batch_size > 0`; `-1` where not fixed.
    pub dims: Vec<i64>,
}

/// Triton's `GET /v2/models/{m}/config` (the fields perf_analyzer and tritonclient read).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelConfig {
    /// Model name.
    pub name: String,
    /// Always `onnxruntime_onnx`.
    pub platform: String,
    /// Always `onnxruntime`.
    pub backend: String,
    /// Most items per execution; 0 when the server does not batch this model.
    pub max_batch_size: u32,
    /// Present when the server batches this model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_batching: Option<DynamicBatching>,
    /// The session instances (Triton's `instance_group`): one group on the CPU.
    pub instance_group: Vec<InstanceGroup>,
    /// Inputs.
    pub input: Vec<ConfigTensor>,
    /// Outputs.
    pub output: Vec<ConfigTensor>,
}

/// Triton's `instance_group` entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InstanceGroup {
    /// Group name (the model's).
    pub name: String,
    /// Always `KIND_CPU`.
    pub kind: String,
    /// Session instances, each running one batch at a time.
    pub count: usize,
}

/// Triton's `dynamic_batching` block.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DynamicBatching {
    /// Longest the first request of a batch waits for others.
    pub max_queue_delay_microseconds: u64,
    /// Batch sizes the batcher aims for; left out when none are set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_batch_size: Vec<usize>,
}
