//! Typed services over the committed test models, used by this package's tests.

/// The MLP: `x: float[batch, 4]` -> `probs`, `logits`: `float[batch, 3]`.
#[nimify::nimify(model = "models/mlp.onnx")]
pub struct Mlp;

/// Several inputs and outputs, a scalar input and an output of unknown dim.
#[nimify::nimify(model = "models/multi_io.onnx", name = "multi")]
pub struct MultiIo;

/// Tensor names that are not identifiers.
#[nimify::nimify(model = "models/odd_names.onnx")]
pub struct OddNames;

/// scikit-learn's ZipMap output, typed as one map per row.
#[nimify::nimify(model = "models/zipmap.onnx")]
pub struct Iris;

/// Every element type.
#[nimify::nimify(model = "models/dtypes.onnx")]
pub struct Dtypes;

/// A fixed dim of 40, above serde's array limit: typed as `nimify::typed::Array<f32, 40>`.
#[nimify::nimify(model = "models/wide.onnx")]
pub struct Wide;
