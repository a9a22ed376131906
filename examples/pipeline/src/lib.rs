//! Two models chained in plain Rust and served as one endpoint: a scaler standardises raw
//! measurements, a scorer turns them into a probability. Both models stay reachable on their
//! own typed and V2 endpoints.

use nimify::ApiError;
use nimify::typed::{Context, Process};

/// Standardises measurements.
#[nimify::nimify(model = "models/scaler.onnx")]
pub struct Scaler;

/// Scores standardised measurements.
#[nimify::nimify(model = "models/scorer.onnx")]
pub struct Scorer;

/// The chain, served as `POST /v1/models/pipeline/predict`.
pub struct Pipeline;

/// Raw rows.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Rows {
    /// Four raw measurements per row.
    pub rows: Vec<[f32; 4]>,
}

/// One score per row.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Scores {
    /// Probabilities in [0, 1].
    pub scores: Vec<f32>,
}

impl Process for Pipeline {
    type Request = Rows;
    type Response = Scores;

    async fn process(&self, ctx: &Context, request: Rows) -> Result<Scores, ApiError> {
        let scaled = ctx.infer::<Scaler>(ScalerInput { raw: request.rows }).await?;
        let scored = ctx.infer::<Scorer>(ScorerInput { features: scaled.scaled }).await?;
        Ok(Scores { scores: scored.score.into_iter().map(|[s]| s).collect() })
    }
}
