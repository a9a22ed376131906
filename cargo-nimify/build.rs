//! Rebuild when the embedded Helm chart (`chart/`) changes: `include_dir!` alone does not
//! tell cargo about the files it reads.

fn main() {
    println!("cargo:rerun-if-changed=chart");
}
