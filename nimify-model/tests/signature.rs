//! The signature reader on the committed test models: exact signatures (snapshots), and every
//! kind of broken file refused with an error, never a panic.

use std::path::PathBuf;

use nimify_model::{Dim, ElementType, ModelError, ValueType, read_model, read_model_from};

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models").join(name)
}

#[test]
fn signatures_match_snapshots() {
    for name in ["mlp", "dtypes", "bf16", "scalar", "multi_io", "odd_names", "zipmap", "external", "strings"] {
        let info = read_model(model(&format!("{name}.onnx"))).expect(name);
        insta::assert_json_snapshot!(name, info);
    }
}

#[test]
fn every_element_type_is_recognised() {
    let info = read_model(model("dtypes.onnx")).expect("dtypes");
    let elems: Vec<ElementType> = info.inputs.iter().filter_map(|i| i.ty.as_tensor().and_then(|(e, _)| e)).collect();
    for e in [
        ElementType::Float,
        ElementType::Double,
        ElementType::Float16,
        ElementType::Int8,
        ElementType::Int16,
        ElementType::Int32,
        ElementType::Int64,
        ElementType::Uint8,
        ElementType::Uint16,
        ElementType::Uint32,
        ElementType::Uint64,
        ElementType::Bool,
        ElementType::String,
    ] {
        assert!(elems.contains(&e), "{e:?} missing from {elems:?}");
    }
    let bf16 = read_model(model("bf16.onnx")).expect("bf16");
    assert_eq!(bf16.inputs[0].ty.as_tensor().and_then(|(e, _)| e), Some(ElementType::Bfloat16));
}

#[test]
fn initializers_are_not_inputs_and_dims_keep_their_names() {
    let info = read_model(model("mlp.onnx")).expect("mlp");
    assert_eq!(info.inputs.len(), 1, "w and b are initializers, not inputs");
    assert_eq!(info.initializer_count, 2);
    let odd = read_model(model("odd_names.onnx")).expect("odd");
    assert_eq!(odd.inputs[0].name, "input/0:x.y");
    let ValueType::Tensor { shape: Some(dims), .. } = &odd.inputs[1].ty else { panic!("tensor") };
    assert_eq!(dims, &[Dim::Symbolic("batch_size*seq_len//2".into()), Dim::Unknown]);
    let ValueType::Tensor { shape: Some(dims), .. } = &odd.inputs[0].ty else { panic!("tensor") };
    assert_eq!(dims[0], Dim::Symbolic("?".into()));
}

#[test]
fn zipmap_output_is_a_sequence_of_maps() {
    let info = read_model(model("zipmap.onnx")).expect("zipmap");
    assert_eq!(info.outputs[1].ty.onnx_type(), "seq(map(int64,tensor(float)))");
}

#[test]
fn external_data_is_listed_not_read() {
    let info = read_model(model("external.onnx")).expect("external");
    assert_eq!(info.external_data.len(), 1);
    assert_eq!(info.external_data[0].location, "external.weights");
    assert_eq!(info.external_data[0].length, Some(256));
}

/// Protobuf cannot tell a file cut exactly between two trailing repeated header entries (opset
/// imports, metadata) from a shorter file; every other cut must be refused.
#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for name in ["mlp", "dtypes", "odd_names", "zipmap", "multi_io", "external"] {
        let bytes = std::fs::read(model(&format!("{name}.onnx"))).expect("read");
        let full = read_model_from(std::io::Cursor::new(&bytes), bytes.len() as u64).expect("full");
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            match read_model_from(std::io::Cursor::new(prefix), prefix.len() as u64) {
                Err(_) => {}
                Ok(info) => assert!(
                    (info.metadata.len() < full.metadata.len() || info.opsets.len() < full.opsets.len())
                        && info.inputs == full.inputs
                        && info.outputs == full.outputs,
                    "{name} cut at {cut} of {} bytes was accepted as {info:?}",
                    bytes.len()
                ),
            }
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Flip each byte of a real model in turn: the reader may accept or refuse, but must not panic.
    let bytes = std::fs::read(model("multi_io.onnx")).expect("read");
    for i in 0..bytes.len() {
        for flip in [0xff_u8, 0x80, 0x01] {
            let mut b = bytes.clone();
            b[i] ^= flip;
            let _ = read_model_from(std::io::Cursor::new(&b), b.len() as u64);
        }
    }
}

#[test]
fn broken_files_have_clear_errors() {
    let err = read_model(model("not_onnx.onnx")).expect_err("text file");
    assert!(matches!(err, ModelError::Malformed { .. }), "{err}");
    assert!(err.to_string().starts_with("not an ONNX model"), "{err}");

    let err = read_model(model("truncated.onnx")).expect_err("truncated");
    assert!(matches!(err, ModelError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("truncated ONNX file"), "{err}");

    let err = read_model(model("does-not-exist.onnx")).expect_err("missing");
    assert!(err.to_string().contains("does-not-exist.onnx"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.onnx");
    std::fs::write(&empty, b"").expect("write");
    assert!(read_model(&empty).expect_err("empty").to_string().contains("is empty"));

    // Valid protobuf that is not a model: a lone varint field 1.
    let not_model = dir.path().join("proto.onnx");
    std::fs::write(&not_model, [0x08, 0x07]).expect("write");
    let err = read_model(&not_model).expect_err("no graph");
    assert!(err.to_string().contains("no graph"), "{err}");
}

#[test]
fn negative_dim_values_are_dynamic() {
    use nimify_model::onnx::{
        GraphProto, ModelProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto,
        type_proto,
    };
    use prost::Message;
    let dim = |v: i64| tensor_shape_proto::Dimension {
        denotation: None,
        value: Some(tensor_shape_proto::dimension::Value::DimValue(v)),
    };
    let vi = ValueInfoProto {
        name: Some("x".into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim: vec![dim(-1), dim(3)] }),
            })),
        }),
        ..Default::default()
    };
    let m = ModelProto {
        ir_version: Some(8),
        graph: Some(GraphProto { input: vec![vi.clone()], output: vec![vi], ..Default::default() }),
        opset_import: vec![OperatorSetIdProto { domain: None, version: Some(17) }],
        ..Default::default()
    };
    let bytes = m.encode_to_vec();
    let info = read_model_from(std::io::Cursor::new(&bytes), bytes.len() as u64).expect("read");
    let ValueType::Tensor { shape: Some(dims), .. } = &info.inputs[0].ty else { panic!("tensor") };
    assert_eq!(dims, &[Dim::Unknown, Dim::Fixed(3)]);
}
