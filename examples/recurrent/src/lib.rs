//! A GRU with several inputs and outputs and dynamic dims (`seq`, `batch`): the typed endpoint
//! checks that `batch` agrees between `x` and the initial state `h0`, and a client keeps its
//! state by sending the returned `h` back as the next `h0`.

/// The recurrent model: `x: float[seq, batch, 3]`, `h0: float[1, batch, 8]` ->
/// `y: float[seq, 1, batch, 8]`, `h: float[1, batch, 8]`.
#[nimify::nimify(model = "models/gru.onnx")]
pub struct Gru;
