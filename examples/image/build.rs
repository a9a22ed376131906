//! Rebuild (re-reading the model's signature) when the model or the labels change.

fn main() {
    println!("cargo:rerun-if-changed=models/classifier.onnx");
    println!("cargo:rerun-if-changed=labels.txt");
}
