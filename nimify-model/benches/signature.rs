//! Reading the signature of a ~1 GiB model (generated into `target/bench-models/`, never
//! committed): 256 initializers of 4 MiB each and 256 nodes, laid out the way exporters write
//! them. The reader seeks past the weights, so this should cost about as much as a tiny model.
//!
//! `cargo bench -p nimify-model` (or `cargo xtask bench signature`).

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nimify_model::onnx::{
    GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto, type_proto,
};
use prost::Message;

const LAYERS: usize = 256;
const WIDTH: i64 = 1024; // 1024 x 1024 f32 = 4 MiB per layer

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            denotation: None,
            value: Some(match d {
                Some(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                None => tensor_shape_proto::dimension::Value::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

/// Writes the model once; later runs reuse it.
fn big_model() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-models");
    let path = dir.join("big-1gib.onnx");
    if path.is_file() {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("create target/bench-models");
    let weights = vec![0u8; (WIDTH * WIDTH * 4) as usize];
    let mut graph = GraphProto { name: Some("big".into()), ..Default::default() };
    for layer in 0..LAYERS {
        let input = if layer == 0 { "x".to_string() } else { format!("h{}", layer - 1) };
        let output = if layer == LAYERS - 1 { "y".to_string() } else { format!("h{layer}") };
        graph.initializer.push(TensorProto {
            name: Some(format!("w{layer}")),
            dims: vec![WIDTH, WIDTH],
            data_type: Some(1),
            raw_data: Some(weights.clone()),
            ..Default::default()
        });
        graph.node.push(NodeProto {
            op_type: Some("MatMul".into()),
            input: vec![input, format!("w{layer}")],
            output: vec![output],
            ..Default::default()
        });
    }
    graph.input.push(value_info("x", &[None, Some(WIDTH)]));
    graph.output.push(value_info("y", &[None, Some(WIDTH)]));
    let model = ModelProto {
        ir_version: Some(8),
        producer_name: Some("nimify-bench".into()),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(17) }],
        ..Default::default()
    };
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, model.encode_to_vec()).expect("write model");
    std::fs::rename(&tmp, &path).expect("rename model");
    path
}

fn bench(c: &mut Criterion) {
    let big = big_model();
    let size = std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0);
    let small = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models/mlp.onnx");
    let info = nimify_model::read_model(&big).expect("read big model");
    assert_eq!(info.inputs.len(), 1);
    assert_eq!(info.initializer_count, LAYERS);
    eprintln!("big model: {size} bytes, {} initializers", info.initializer_count);
    let mut group = c.benchmark_group("read_model");
    group.bench_function("1GiB, 256 initializers", |b| b.iter(|| nimify_model::read_model(&big).expect("read")));
    group.bench_function("289 B mlp", |b| b.iter(|| nimify_model::read_model(&small).expect("read")));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
