//! A scikit-learn logistic regression (converted by skl2onnx, with its default ZipMap output)
//! behind a typed endpoint that takes flower measurements and answers with species names.

use std::collections::BTreeMap;

use nimify::ApiError;
use nimify::typed::{Context, Process};

/// The classifier; its state is the label list.
#[nimify::nimify(model = "iris.onnx")]
pub struct Iris {
    labels: Vec<String>,
}

impl Default for Iris {
    fn default() -> Self {
        Self { labels: ["setosa", "versicolor", "virginica"].map(String::from).to_vec() }
    }
}

/// Flowers to classify.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Flowers {
    /// Sepal length, sepal width, petal length, petal width in cm, one row per flower.
    pub measurements: Vec<[f32; 4]>,
}

/// One flower's answer.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Prediction {
    /// The most likely species.
    pub species: String,
    /// Probability per species name.
    pub probabilities: BTreeMap<String, f32>,
}

/// Answers, in request order.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Predictions {
    /// One per flower.
    pub predictions: Vec<Prediction>,
}

impl Process for Iris {
    type Request = Flowers;
    type Response = Predictions;

    async fn process(&self, ctx: &Context, request: Flowers) -> Result<Predictions, ApiError> {
        if request.measurements.is_empty() {
            return Err(ApiError::InvalidTensor("measurements: send at least one flower".into()));
        }
        let out = ctx.infer::<Self>(IrisInput { x: request.measurements }).await?;
        let name = |class: i64| {
            usize::try_from(class)
                .ok()
                .and_then(|i| self.labels.get(i))
                .cloned()
                .ok_or_else(|| ApiError::Inference(format!("class {class} has no label")))
        };
        let predictions = out
            .output_label
            .iter()
            .zip(out.output_probability)
            .map(|(&label, probs)| {
                let probabilities =
                    probs.into_iter().map(|(class, p)| name(class).map(|n| (n, p))).collect::<Result<_, _>>()?;
                Ok(Prediction { species: name(label)?, probabilities })
            })
            .collect::<Result<_, ApiError>>()?;
        Ok(Predictions { predictions })
    }
}
