//! Rebuild (re-reading the model's signature) when the model file changes.

fn main() {
    println!("cargo:rerun-if-changed=models/gru.onnx");
}
