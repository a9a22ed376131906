//! A reference profile is checked against the model's signature at compile time: one made for
//! another model, a file that is not a profile, a missing file, the option twice.

#[nimify::nimify(model = "../../../../tests/models/mlp.onnx", reference = "../../../../tests/models/tabular.profile.json")]
pub struct OtherModel;

#[nimify::nimify(model = "../../../../tests/models/tabular.onnx", reference = "../../../../tests/models/not_onnx.onnx")]
pub struct NotAProfile;

#[nimify::nimify(model = "../../../../tests/models/tabular.onnx", reference = "missing.profile.json")]
pub struct Missing;

#[nimify::nimify(
    model = "../../../../tests/models/tabular.onnx",
    reference = "../../../../tests/models/tabular.profile.json",
    reference = "../../../../tests/models/tabular.profile.json"
)]
pub struct Twice;

fn main() {}
