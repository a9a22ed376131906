//! A reference profile that fits the model compiles in, and the service registers with it.

#[nimify::nimify(model = "../../../../tests/models/tabular.onnx", reference = "../../../../tests/models/tabular.profile.json")]
pub struct Tabular;

fn main() {
    use nimify::__private::TypedModel;
    let (path, json) = Tabular::signature().reference.expect("compiled in");
    assert!(path.ends_with("tests/models/tabular.profile.json"));
    assert!(json.contains("nimify.profile/v1"));
    let _builder = nimify::ServerBuilder::default().typed::<Tabular>();
}
