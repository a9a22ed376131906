//! Typed services over the committed test models, used by this package's tests, and the code
//! the fuzz targets run ([`fuzz`]).

pub mod fuzz;

/// The MLP: `x: float[batch, 4]` -> `probs`, `logits`: `float[batch, 3]`.
#[nimify::nimify(model = "models/mlp.onnx")]
pub struct Mlp;

/// A tabular classifier with its drift reference profile compiled in.
#[nimify::nimify(model = "models/tabular.onnx", reference = "models/tabular.profile.json")]
pub struct Tabular;

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

/// A model that declares `y: float[batch, 1]` and produces `[batch, 3]`, served with the dims
/// it really has.
#[nimify::nimify(model = "models/lying_shape.onnx", dims("y" = ["batch", 3]))]
pub struct Lying;

/// The same model taken at its word: refused at start, since every answer would fail.
#[nimify::nimify(model = "models/lying_shape.onnx", name = "lying-as-declared")]
pub struct LyingAsDeclared;

/// Custom processing with state: the iris classifier answering with label names.
#[nimify::nimify(model = "models/zipmap.onnx", name = "iris-labels")]
pub struct IrisLabels {
    /// Class names by class id (the service's state).
    pub labels: Vec<String>,
}

/// What clients of `iris-labels` send.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct FlowerRequest {
    /// Sepal length, sepal width, petal length, petal width (cm), one row per flower.
    pub flowers: Vec<[f32; 4]>,
}

/// What clients of `iris-labels` get back.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct FlowerResponse {
    /// The most likely species per flower.
    pub species: Vec<String>,
    /// Its probability.
    pub confidence: Vec<f32>,
}

impl nimify::typed::Process for IrisLabels {
    type Request = FlowerRequest;
    type Response = FlowerResponse;

    async fn process(
        &self,
        ctx: &nimify::typed::Context,
        request: FlowerRequest,
    ) -> Result<FlowerResponse, nimify::ApiError> {
        if request.flowers.is_empty() {
            return Err(nimify::ApiError::InvalidTensor("flowers: send at least one flower".into()));
        }
        let out = ctx.infer::<Self>(IrisLabelsInput { x: request.flowers }).await?;
        let mut species = Vec::new();
        let mut confidence = Vec::new();
        for (label, probs) in out.output_label.iter().zip(&out.output_probability) {
            let name = usize::try_from(*label)
                .ok()
                .and_then(|i| self.labels.get(i))
                .ok_or_else(|| nimify::ApiError::Inference(format!("class {label} has no label")))?;
            species.push(name.clone());
            confidence.push(probs.get(label).copied().unwrap_or(0.0));
        }
        Ok(FlowerResponse { species, confidence })
    }
}

/// A pipeline: the MLP's probabilities feed `multi_io` (features = probabilities, ids = the
/// arg-max class + 1, threshold 0.5), served as one endpoint.
pub struct MlpThenMulti;

/// Pipeline input.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineRequest {
    /// Rows of 4 features.
    pub x: Vec<[f32; 4]>,
}

/// Pipeline output.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineResponse {
    /// `multi_io`'s `total` per row.
    pub total: Vec<f32>,
    /// `multi_io`'s `above` per row.
    pub above: Vec<bool>,
}

impl nimify::typed::Process for MlpThenMulti {
    type Request = PipelineRequest;
    type Response = PipelineResponse;

    async fn process(
        &self,
        ctx: &nimify::typed::Context,
        request: PipelineRequest,
    ) -> Result<PipelineResponse, nimify::ApiError> {
        let first = ctx.infer::<Mlp>(MlpInput { x: request.x }).await?;
        let ids = first
            .probs
            .iter()
            .map(|p| {
                p.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
                    as i32
                    + 1
            })
            .collect();
        let features = first.probs.iter().map(|p| p.to_vec()).collect();
        let second = ctx.infer::<MultiIo>(MultiIoInput { features, ids, threshold: 0.5 }).await?;
        Ok(PipelineResponse { total: second.total, above: second.above })
    }
}
