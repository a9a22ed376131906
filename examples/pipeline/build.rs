//! Rebuild (re-reading the models' signatures) when a model file changes.

fn main() {
    println!("cargo:rerun-if-changed=models/scaler.onnx");
    println!("cargo:rerun-if-changed=models/scorer.onnx");
}
