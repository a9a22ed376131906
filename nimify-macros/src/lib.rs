//! The `#[nimify(model = "...")]` attribute macro, re-exported by the `nimify` crate.
//!
//! This file only parses and delegates: `args` reads the attribute, `ir` reads the model's
//! signature (through `nimify-model`, never the weights) into an IR, and `expand` generates the
//! typed input/output structs and the glue. Every problem is a spanned `compile_error!` next to a
//! fallback expansion, never a panic.

mod args;
mod expand;
mod ir;

use proc_macro::TokenStream;

/// Turns a struct into a typed service for an ONNX model:
///
/// ```ignore
/// #[nimify::nimify(model = "models/mlp.onnx")]
/// pub struct Mlp;
/// ```
///
/// generates `MlpInput` / `MlpOutput` (one field per tensor, fixed dims in the type) and
/// implements `nimify::typed::TypedModel` for `Mlp`. Options: `model` (required, relative to the
/// crate's `Cargo.toml`), `name` (served name; default: the file stem), `crate` (path to the
/// `nimify` crate; default `::nimify`), and `dims("tensor" = ["batch", 22], ...)` for models
/// that declare shapes they do not produce: the listed tensors get these dims instead of the
/// file's, in the generated types and at run time (metadata, input checks, warm-up).
#[proc_macro_attribute]
pub fn nimify(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::nimify(attr.into(), item.into()).into()
}
