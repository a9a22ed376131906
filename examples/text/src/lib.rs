//! A text model whose preprocessing is the Hugging Face `tokenizers` crate: clients send plain
//! text, the service tokenizes it (a WordPiece tokenizer trained by `examples/make_models.py`,
//! read at start from `tokenizer.json`, an asset declared in Cargo.toml that `cargo nimify image`
//! packs next to the binary), pads the batch and runs the model.

use nimify::ApiError;
use nimify::typed::{Context, Process};
use tokenizers::Tokenizer;

/// The sentiment model: `input_ids`, `attention_mask: int64[batch, seq]` -> `probs: float[batch, 2]`.
#[nimify::nimify(model = "models/sentiment.onnx")]
pub struct Sentiment {
    tokenizer: Tokenizer,
}

impl Sentiment {
    /// Loads the tokenizer asset.
    pub fn new() -> Result<Self, String> {
        let path = nimify::asset!("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&path).map_err(|e| format!("cannot load the tokenizer {}: {e}", path.display()))?;
        Ok(Self { tokenizer })
    }
}

/// Texts to score.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct TextRequest {
    /// One text per item.
    pub texts: Vec<String>,
}

/// Scores per text.
#[derive(Debug, serde::Deserialize, serde::Serialize, utoipa::ToSchema)]
pub struct TextResponse {
    /// Probability of the positive class per text.
    pub positive: Vec<f32>,
    /// The token ids each text became (what the model saw, before padding).
    pub input_ids: Vec<Vec<i64>>,
}

impl Process for Sentiment {
    type Request = TextRequest;
    type Response = TextResponse;

    async fn process(&self, ctx: &Context, request: TextRequest) -> Result<TextResponse, ApiError> {
        if request.texts.is_empty() {
            return Err(ApiError::InvalidTensor("texts: send at least one text".into()));
        }
        let encodings = self
            .tokenizer
            .encode_batch(request.texts, false)
            .map_err(|e| ApiError::InvalidTensor(format!("texts: cannot tokenize: {e}")))?;
        let ids: Vec<Vec<i64>> =
            encodings.iter().map(|e| e.get_ids().iter().map(|&i| i64::from(i)).collect()).collect();
        if ids.iter().any(Vec::is_empty) {
            return Err(ApiError::InvalidTensor("texts: a text has no tokens".into()));
        }
        let seq = ids.iter().map(Vec::len).max().unwrap_or(1);
        let pad = |row: &Vec<i64>, fill: i64, value: fn(i64) -> i64| {
            row.iter().map(|&t| value(t)).chain(std::iter::repeat(fill)).take(seq).collect::<Vec<_>>()
        };
        let input = SentimentInput {
            input_ids: ids.iter().map(|r| pad(r, 0, |t| t)).collect(),
            attention_mask: ids.iter().map(|r| pad(r, 0, |_| 1)).collect(),
        };
        let out = ctx.infer::<Self>(input).await?;
        Ok(TextResponse { positive: out.probs.iter().map(|p| p[1]).collect(), input_ids: ids })
    }
}
