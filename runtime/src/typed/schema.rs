//! The OpenAPI schemas of typed inputs and outputs: each tensor as nested arrays with its item
//! type, fixed dims as exact lengths and every dim named in its description.

use nimify_model::decl::{DeclKind, TensorDecl};
use nimify_model::{Dim, ElementType};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

/// The exact JSON schema of one tensor.
pub fn tensor_schema(decl: &TensorDecl) -> RefOr<Schema> {
    match &decl.kind {
        DeclKind::Tensor(e, dims) => {
            let mut schema: RefOr<Schema> = leaf(*e);
            for (i, d) in dims.iter().enumerate().rev() {
                let mut a = ArrayBuilder::new().items(schema);
                a = match d {
                    Dim::Fixed(n) => a
                        .min_items(Some(*n as usize))
                        .max_items(Some(*n as usize))
                        .description(Some(format!("dim {i}: {n}"))),
                    Dim::Symbolic(s) => {
                        a.description(Some(format!("dim {i}: `{s}` (any size, the same wherever `{s}` appears)")))
                    }
                    Dim::Unknown => a.description(Some(format!("dim {i}: any size"))),
                };
                schema = a.build().into();
            }
            schema
        }
        DeclKind::AnyRank(e) => ObjectBuilder::new()
            .property(
                "shape",
                ArrayBuilder::new().items(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0))),
            )
            .property("data", ArrayBuilder::new().items(leaf(*e)))
            .required("shape")
            .required("data")
            .description(Some("a tensor of any rank: flat row-major data and its shape"))
            .build()
            .into(),
        DeclKind::MapRows(_, v) => ArrayBuilder::new()
            .items(ObjectBuilder::new().additional_properties(Some(leaf(*v))))
            .description(Some("one map per row (class -> score)"))
            .build()
            .into(),
    }
}

fn leaf(e: ElementType) -> RefOr<Schema> {
    let o = ObjectBuilder::new();
    let o = match e {
        ElementType::Float | ElementType::Float16 | ElementType::Bfloat16 => {
            o.schema_type(Type::Number).format(Some(SchemaFormat::KnownFormat(KnownFormat::Float)))
        }
        ElementType::Double => o.schema_type(Type::Number).format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
        ElementType::Bool => o.schema_type(Type::Boolean),
        ElementType::String => o.schema_type(Type::String),
        ElementType::Int64 | ElementType::Uint64 => {
            o.schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        }
        ElementType::Uint8 | ElementType::Uint16 | ElementType::Uint32 => o.schema_type(Type::Integer).minimum(Some(0)),
        _ => o.schema_type(Type::Integer).format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32))),
    };
    o.build().into()
}

/// An object schema with every field required.
pub fn object_schema(fields: Vec<(&str, RefOr<Schema>)>) -> RefOr<Schema> {
    let mut o = ObjectBuilder::new();
    for (name, schema) in fields {
        o = o.property(name, schema).required(name);
    }
    o.build().into()
}
