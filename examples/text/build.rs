//! Rebuild (re-reading the model's signature) when the model or the tokenizer change.

fn main() {
    println!("cargo:rerun-if-changed=models/sentiment.onnx");
    println!("cargo:rerun-if-changed=tokenizer.json");
}
