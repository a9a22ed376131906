//! An image classifier: clients send an encoded PNG or JPEG (base64), the service decodes and
//! resizes it in Rust with the `image` crate, runs the CNN and answers with the top-k labels.
//! The label list is embedded with `include_str!`, so the binary needs no files besides its model.

use base64::Engine as _;
use nimify::ApiError;
use nimify::typed::{Context, Process};

/// The CNN: `pixels: float[batch, 3, 32, 32]` (RGB in [0, 1]) -> `probs: float[batch, 10]`.
#[nimify::nimify(model = "models/classifier.onnx")]
pub struct Classifier {
    labels: Vec<String>,
}

impl Default for Classifier {
    fn default() -> Self {
        Self { labels: include_str!("../labels.txt").lines().map(String::from).collect() }
    }
}

/// Side of the square the model takes.
pub const SIDE: u32 = 32;

/// An image to classify.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ImageRequest {
    /// A PNG or JPEG file, base64-encoded.
    pub image: String,
    /// How many labels to return (default 3).
    #[serde(default)]
    pub top_k: Option<usize>,
}

/// One label and its probability.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct Label {
    /// Class name.
    pub label: String,
    /// Probability.
    pub probability: f32,
}

/// The best labels, most likely first.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct ImageResponse {
    /// Top-k labels.
    pub labels: Vec<Label>,
}

/// Decodes, resizes to 32x32 (Triangle filter; an image already that size is used as is) and
/// lays the pixels out as CHW floats in [0, 1].
pub fn preprocess(encoded: &[u8]) -> Result<[[[f32; 32]; 32]; 3], ApiError> {
    let img = image::load_from_memory(encoded)
        .map_err(|e| ApiError::InvalidTensor(format!("image: cannot decode it as PNG or JPEG: {e}")))?
        .to_rgb8();
    let img = if img.dimensions() == (SIDE, SIDE) {
        img
    } else {
        image::imageops::resize(&img, SIDE, SIDE, image::imageops::FilterType::Triangle)
    };
    let mut chw = [[[0f32; 32]; 32]; 3];
    for (x, y, p) in img.enumerate_pixels() {
        for (plane, value) in chw.iter_mut().zip(p.0) {
            plane[y as usize][x as usize] = f32::from(value) / 255.0;
        }
    }
    Ok(chw)
}

impl Process for Classifier {
    type Request = ImageRequest;
    type Response = ImageResponse;

    async fn process(&self, ctx: &Context, request: ImageRequest) -> Result<ImageResponse, ApiError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(request.image.trim())
            .map_err(|e| ApiError::InvalidTensor(format!("image: not base64: {e}")))?;
        let pixels = preprocess(&bytes)?;
        let out = ctx.infer::<Self>(ClassifierInput { pixels: vec![pixels] }).await?;
        let probs = out.probs.into_iter().next().ok_or_else(|| ApiError::Inference("no output row".into()))?;
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let k = request.top_k.unwrap_or(3).clamp(1, ranked.len());
        let labels = ranked
            .into_iter()
            .take(k)
            .map(|(i, p)| Label {
                label: self.labels.get(i).cloned().unwrap_or_else(|| format!("class {i}")),
                probability: p,
            })
            .collect();
        Ok(ImageResponse { labels })
    }
}
