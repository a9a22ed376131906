//! What kind of tensor an ONNX input or output is, as typed code sees it: the one rule the
//! `#[nimify]` macro generates Rust types from at compile time and the runtime checks a loaded
//! model against at start, so the two cannot disagree.

use crate::{Dim, ElementType, ValueInfo, ValueType};

/// How one tensor is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclKind {
    /// A dense tensor of known rank; each dim fixed, named (symbolic) or unknown.
    Tensor(ElementType, Vec<Dim>),
    /// A dense tensor whose rank the model does not declare.
    AnyRank(ElementType),
    /// `seq(map(K, V))`, scikit-learn's ZipMap output: one map per row.
    MapRows(ElementType, ElementType),
}

/// One input or output: its exact name and how it is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// Exact tensor name.
    pub name: String,
    /// Its type.
    pub kind: DeclKind,
}

/// Element types a typed service can carry: every one the Open Inference Protocol names.
pub fn supported(elem: ElementType) -> bool {
    elem.kserve_name().is_some()
}

impl TensorDecl {
    /// A dense tensor.
    pub fn tensor(name: &str, elem: ElementType, dims: Vec<Dim>) -> Self {
        Self { name: name.into(), kind: DeclKind::Tensor(elem, dims) }
    }

    /// A tensor of undeclared rank.
    pub fn any_rank(name: &str, elem: ElementType) -> Self {
        Self { name: name.into(), kind: DeclKind::AnyRank(elem) }
    }

    /// A sequence of maps.
    pub fn map_rows(name: &str, key: ElementType, value: ElementType) -> Self {
        Self { name: name.into(), kind: DeclKind::MapRows(key, value) }
    }

    /// The declaration of a model's input or output, or why it cannot be typed.
    ///
    /// ```
    /// use nimify_model::decl::{DeclKind, TensorDecl};
    /// use nimify_model::{Dim, ElementType, ValueInfo, ValueType};
    ///
    /// let x = ValueInfo {
    ///     name: "x".into(),
    ///     ty: ValueType::Tensor { elem: Some(ElementType::Float), shape: Some(vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)]) },
    ///     doc: String::new(),
    /// };
    /// let decl = TensorDecl::classify(&x).unwrap();
    /// assert_eq!(decl.kind, DeclKind::Tensor(ElementType::Float, vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)]));
    /// assert_eq!(decl.describe(), r#""x": float[batch, 4]"#);
    /// ```
    pub fn classify(v: &ValueInfo) -> Result<Self, String> {
        match &v.ty {
            ValueType::Tensor { elem: Some(e), shape } if supported(*e) => Ok(match shape {
                Some(dims) => Self::tensor(&v.name, *e, dims.clone()),
                None => Self::any_rank(&v.name, *e),
            }),
            ValueType::Tensor { elem: Some(e), .. } => Err(format!(
                "element type `{}` is not supported; nimify types bool, (u)int8..64, float16, bfloat16, float, double and string",
                e.onnx_name()
            )),
            ValueType::Sequence { of } => match of.as_ref() {
                ValueType::Map { key: Some(k), value } => match value.as_ref() {
                    ValueType::Tensor { elem: Some(val), .. } if supported(*k) && supported(*val) => {
                        Ok(Self::map_rows(&v.name, *k, *val))
                    }
                    _ => Err(format!("type `{}` is not supported", v.ty.onnx_type())),
                },
                _ => {
                    Err(format!("type `{}` is not supported; export tensors (or a sequence of maps)", v.ty.onnx_type()))
                }
            },
            other => Err(format!("type `{}` is not supported", other.onnx_type())),
        }
    }

    /// `"name": type[dims]`, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            DeclKind::Tensor(e, d) => format!(
                "{:?}: {}[{}]",
                self.name,
                e.onnx_name(),
                d.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            DeclKind::AnyRank(e) => format!("{:?}: {}[...]", self.name, e.onnx_name()),
            DeclKind::MapRows(k, v) => format!("{:?}: seq(map({}, {}))", self.name, k.onnx_name(), v.onnx_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(ty: ValueType) -> ValueInfo {
        ValueInfo { name: "t".into(), ty, doc: String::new() }
    }

    fn tensor(elem: Option<ElementType>, shape: Option<Vec<Dim>>) -> ValueType {
        ValueType::Tensor { elem, shape }
    }

    #[test]
    fn every_kind_of_value_is_classified_or_refused_with_its_type() {
        use ElementType::*;
        let map = |k, v| ValueType::Sequence {
            of: Box::new(ValueType::Map { key: Some(k), value: Box::new(tensor(Some(v), None)) }),
        };
        let fixed = TensorDecl::classify(&value(tensor(Some(Float), Some(vec![Dim::Unknown, Dim::Fixed(3)]))));
        assert_eq!(fixed.expect("tensor").describe(), r#""t": float[?, 3]"#);
        let open = TensorDecl::classify(&value(tensor(Some(Int64), None))).expect("any rank");
        assert_eq!(open.kind, DeclKind::AnyRank(Int64));
        assert_eq!(open.describe(), r#""t": int64[...]"#);
        let rows = TensorDecl::classify(&value(map(Int64, Float))).expect("zipmap");
        assert_eq!(rows.describe(), r#""t": seq(map(int64, float))"#);
        for (ty, want) in [
            (tensor(Some(Complex64), Some(vec![])), "element type `complex64` is not supported"),
            (tensor(None, None), "type `tensor(undefined)` is not supported"),
            (map(Int64, Complex64), "type `seq(map(int64,tensor(complex64)))` is not supported"),
            (ValueType::Sequence { of: Box::new(tensor(Some(Float), None)) }, "export tensors (or a sequence of maps)"),
        ] {
            let err = TensorDecl::classify(&value(ty.clone())).expect_err(&ty.onnx_type());
            assert!(err.contains(want), "{}: {err}", ty.onnx_type());
        }
    }
}
