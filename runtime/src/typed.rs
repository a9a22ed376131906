//! Typed services: what `#[nimify(model = "...")]` generates code against.
//!
//! The macro turns each tensor into a Rust type (fixed dims become arrays, the others `Vec`s)
//! and implements [`TypedModel`] with the signature compiled in. [`TensorField`] converts those
//! types to and from [`Tensor`]s; [`TensorDecl::schema`] writes the exact OpenAPI schema.

use std::collections::BTreeMap;

use half::{bf16, f16};
use nimify_model::{Dim, ElementType, ValueInfo, ValueType};
use serde::{Deserialize, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

use crate::tensor::{Tensor, TensorData};

/// A model whose signature is known at compile time.
pub trait TypedModel: Send + Sync + 'static {
    /// One field per input tensor.
    type Input: IntoTensors + serde::de::DeserializeOwned + Serialize + utoipa::ToSchema + Send + 'static;
    /// One field per output tensor.
    type Output: FromTensors + Serialize + serde::de::DeserializeOwned + utoipa::ToSchema + Send + 'static;
    /// Served name.
    const NAME: &'static str;
    /// Absolute path of the model file the signature was read from at compile time.
    const MODEL_PATH: &'static str;
    /// The signature compiled in; checked against the model loaded at start.
    fn signature() -> Signature;
}

/// Converts generated input structs into named tensors (model input order).
pub trait IntoTensors {
    /// The tensors, or a message naming the tensor and the problem.
    fn into_tensors(self) -> Result<Vec<(String, Tensor)>, String>;
}

/// Builds generated output structs from named tensors.
pub trait FromTensors: Sized {
    /// The struct, or a message naming the tensor and the problem.
    fn from_tensors(outputs: Vec<(String, Tensor)>) -> Result<Self, String>;
}

/// Inputs and outputs as compiled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Inputs in model order.
    pub inputs: Vec<TensorDecl>,
    /// Outputs in model order.
    pub outputs: Vec<TensorDecl>,
    /// Tensors whose dims the service declares instead of the model file
    /// (`#[nimify(dims("y" = ["batch", 22]))]`), applied to the file when it is loaded.
    pub dims_overrides: Vec<(String, Vec<Dim>)>,
}

/// How one tensor is typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclKind {
    /// Dense tensor with known dims.
    Tensor(ElementType, Vec<Dim>),
    /// Dense tensor of undeclared rank ([`Dyn`]).
    AnyRank(ElementType),
    /// `seq(map(K, V))`: one map per row.
    MapRows(ElementType, ElementType),
}

/// One compiled-in tensor declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    /// Exact tensor name.
    pub name: String,
    /// Its type.
    pub kind: DeclKind,
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

    /// The declaration a model file implies for one of its inputs or outputs.
    pub fn from_value_info(v: &ValueInfo) -> Option<Self> {
        match &v.ty {
            ValueType::Tensor { elem: Some(e), shape: Some(d) } => Some(Self::tensor(&v.name, *e, d.clone())),
            ValueType::Tensor { elem: Some(e), shape: None } => Some(Self::any_rank(&v.name, *e)),
            ValueType::Sequence { of } => match of.as_ref() {
                ValueType::Map { key: Some(k), value } => match value.as_ref() {
                    ValueType::Tensor { elem: Some(val), .. } => Some(Self::map_rows(&v.name, *k, *val)),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        }
    }

    /// `name: type[dims]`, for messages.
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

    /// The exact JSON schema: nested arrays with item types, fixed dims as min/max items and
    /// every dim named in the description.
    pub fn schema(&self) -> RefOr<Schema> {
        match &self.kind {
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

/// A tensor of a rank the model leaves open: flat row-major data and its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dyn<T> {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: Vec<T>,
}

/// A scalar element type.
pub trait Element: Sized + Clone {
    /// Wraps a buffer.
    fn into_data(v: Vec<Self>) -> TensorData;
    /// Unwraps a buffer of this type.
    fn from_data(d: TensorData) -> Result<Vec<Self>, String>;
}

macro_rules! element {
    ($($t:ty => $variant:ident),*) => {$(
        impl Element for $t {
            fn into_data(v: Vec<Self>) -> TensorData { TensorData::$variant(v) }
            fn from_data(d: TensorData) -> Result<Vec<Self>, String> {
                match d {
                    TensorData::$variant(v) => Ok(v),
                    other => Err(format!("expected {} elements, got {}", stringify!($t), other.element_type().onnx_name())),
                }
            }
        }
        impl Nested for $t {
            type Elem = $t;
            fn shape_of(_: Option<&Self>, _: &mut Vec<usize>) {}
            fn fits(&self, shape: &[usize]) -> bool { shape.is_empty() }
            fn flatten(self, out: &mut Vec<$t>) { out.push(self) }
            fn unflatten(_: &[usize], it: &mut std::vec::IntoIter<$t>) -> Result<Self, String> { it.next().ok_or_else(|| "too few elements".to_string()) }
        }
    )*};
}

element!(bool => Bool, u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16, i32 => I32, i64 => I64, f16 => F16, bf16 => Bf16, f32 => F32, f64 => F64);

impl Element for String {
    fn into_data(v: Vec<Self>) -> TensorData {
        TensorData::Bytes(v.into_iter().map(String::into_bytes).collect())
    }
    fn from_data(d: TensorData) -> Result<Vec<Self>, String> {
        match d {
            TensorData::Bytes(v) => v
                .into_iter()
                .map(|b| String::from_utf8(b).map_err(|_| "string element is not UTF-8".to_string()))
                .collect(),
            other => Err(format!("expected string elements, got {}", other.element_type().onnx_name())),
        }
    }
}

impl Nested for String {
    type Elem = String;
    fn shape_of(_: Option<&Self>, _: &mut Vec<usize>) {}
    fn fits(&self, shape: &[usize]) -> bool {
        shape.is_empty()
    }
    fn flatten(self, out: &mut Vec<String>) {
        out.push(self);
    }
    fn unflatten(_: &[usize], it: &mut std::vec::IntoIter<String>) -> Result<Self, String> {
        it.next().ok_or_else(|| "too few elements".to_string())
    }
}

/// Nested arrays and vectors of elements, row-major.
pub trait Nested: Sized {
    /// The scalar at the bottom.
    type Elem: Element;
    /// Appends the shape of `v` (or of an empty value's static part when `None`).
    fn shape_of(v: Option<&Self>, out: &mut Vec<usize>);
    /// Whether every row has exactly `shape` (checked once per request, without allocating).
    fn fits(&self, shape: &[usize]) -> bool;
    /// Appends the elements, row-major.
    fn flatten(self, out: &mut Vec<Self::Elem>);
    /// Rebuilds a value of `shape` from elements.
    fn unflatten(shape: &[usize], it: &mut std::vec::IntoIter<Self::Elem>) -> Result<Self, String>;
}

impl<T: Nested> Nested for Vec<T> {
    type Elem = T::Elem;
    fn shape_of(v: Option<&Self>, out: &mut Vec<usize>) {
        out.push(v.map_or(0, Vec::len));
        T::shape_of(v.and_then(|v| v.first()), out);
    }
    fn fits(&self, shape: &[usize]) -> bool {
        shape.split_first().is_some_and(|(&n, inner)| n == self.len() && self.iter().all(|item| item.fits(inner)))
    }
    fn flatten(self, out: &mut Vec<Self::Elem>) {
        self.into_iter().for_each(|item| item.flatten(out));
    }
    fn unflatten(shape: &[usize], it: &mut std::vec::IntoIter<Self::Elem>) -> Result<Self, String> {
        let (&n, inner) = shape.split_first().ok_or("rank is lower than the type expects")?;
        (0..n).map(|_| T::unflatten(inner, it)).collect()
    }
}

impl<T: Nested, const N: usize> Nested for [T; N] {
    type Elem = T::Elem;
    fn shape_of(v: Option<&Self>, out: &mut Vec<usize>) {
        out.push(N);
        T::shape_of(v.and_then(|v| v.first()), out);
    }
    fn fits(&self, shape: &[usize]) -> bool {
        shape.split_first().is_some_and(|(&n, inner)| n == N && self.iter().all(|item| item.fits(inner)))
    }
    fn flatten(self, out: &mut Vec<Self::Elem>) {
        self.into_iter().for_each(|item| item.flatten(out));
    }
    fn unflatten(shape: &[usize], it: &mut std::vec::IntoIter<Self::Elem>) -> Result<Self, String> {
        match shape.first() {
            Some(&n) if n == N => {}
            Some(&n) => return Err(format!("dim of size {n} where the type fixes {N}")),
            None => return Err("rank is lower than the type expects".into()),
        }
        let items = Vec::<T>::unflatten(shape, it)?;
        items.try_into().map_err(|_| format!("expected {N} items"))
    }
}

/// A field of a generated input or output struct.
pub trait TensorField: Sized {
    /// Into a tensor (shape from the value).
    fn into_tensor(self) -> Result<Tensor, String>;
    /// From a tensor ONNX Runtime returned.
    fn from_tensor(t: Tensor) -> Result<Self, String>;
}

impl<T: Nested> TensorField for T {
    fn into_tensor(self) -> Result<Tensor, String> {
        let mut shape = Vec::new();
        T::shape_of(Some(&self), &mut shape);
        if !self.fits(&shape) {
            return Err(format!("ragged nested arrays: not every row has the first row's shape {shape:?}"));
        }
        let mut data = Vec::with_capacity(shape.iter().product());
        self.flatten(&mut data);
        Tensor::new(shape, <T::Elem as Element>::into_data(data))
    }
    fn from_tensor(t: Tensor) -> Result<Self, String> {
        let shape = t.shape.clone();
        let mut it = <T::Elem as Element>::from_data(t.data)?.into_iter();
        let v = T::unflatten(&shape, &mut it)?;
        if it.next().is_some() {
            return Err(format!("shape {shape:?} has more elements or dims than the type holds"));
        }
        Ok(v)
    }
}

impl<T: Element> TensorField for Dyn<T> {
    fn into_tensor(self) -> Result<Tensor, String> {
        Tensor::new(self.shape, T::into_data(self.data))
    }
    fn from_tensor(t: Tensor) -> Result<Self, String> {
        Ok(Dyn { shape: t.shape, data: T::from_data(t.data)? })
    }
}

impl<K: Ord + serde::de::DeserializeOwned + Serialize, V: serde::de::DeserializeOwned + Serialize> TensorField
    for Vec<BTreeMap<K, V>>
{
    fn into_tensor(self) -> Result<Tensor, String> {
        let rows =
            self.iter().map(|m| serde_json::to_vec(m).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>()?;
        Tensor::new(vec![rows.len()], TensorData::Bytes(rows))
    }
    fn from_tensor(t: Tensor) -> Result<Self, String> {
        match t.data {
            TensorData::Bytes(rows) => rows
                .iter()
                .map(|r| serde_json::from_slice(r).map_err(|e| format!("map row is not the expected JSON: {e}")))
                .collect(),
            other => Err(format!("expected JSON map rows, got {}", other.element_type().onnx_name())),
        }
    }
}

/// Outputs by name, taken one field at a time by generated code.
pub struct OutputMap(Vec<(String, Tensor)>);

impl OutputMap {
    /// Wraps what the model returned.
    pub fn new(outputs: Vec<(String, Tensor)>) -> Self {
        Self(outputs)
    }

    /// Removes and converts one output.
    pub fn take<T: TensorField>(&mut self, name: &str) -> Result<T, String> {
        let i = self
            .0
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| format!("the model returned no output {name:?}"))?;
        let (_, t) = self.0.swap_remove(i);
        T::from_tensor(t).map_err(|e| format!("output {name:?}: {e}"))
    }
}

/// Refuses a loaded model whose signature differs from the compiled-in one, describing both.
pub fn check_signature(model: &crate::Model, compiled: &Signature) -> Result<(), crate::LoadError> {
    // The model was loaded with the compiled-in overrides applied (ServerBuilder::typed).
    let file = Signature {
        inputs: model.info().inputs.iter().filter_map(TensorDecl::from_value_info).collect(),
        outputs: model.info().outputs.iter().filter_map(TensorDecl::from_value_info).collect(),
        dims_overrides: compiled.dims_overrides.clone(),
    };
    if &file == compiled {
        return Ok(());
    }
    let describe = |s: &Signature| {
        let list = |d: &[TensorDecl]| d.iter().map(TensorDecl::describe).collect::<Vec<_>>().join(", ");
        format!("inputs ({}) -> outputs ({})", list(&s.inputs), list(&s.outputs))
    };
    Err(crate::LoadError::SignatureMismatch {
        path: model.path().to_path_buf(),
        compiled: describe(compiled),
        found: describe(&file),
    })
}

/// A fixed dim larger than serde's array support (32): a heap-allocated `[T; N]` that
/// serializes as a JSON array of exactly `N` items.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T, const N: usize>(pub Box<[T; N]>);

impl<T, const N: usize> std::ops::Deref for Array<T, N> {
    type Target = [T; N];
    fn deref(&self) -> &[T; N] {
        &self.0
    }
}

impl<T, const N: usize> std::ops::DerefMut for Array<T, N> {
    fn deref_mut(&mut self) -> &mut [T; N] {
        &mut self.0
    }
}

impl<T, const N: usize> From<[T; N]> for Array<T, N> {
    fn from(a: [T; N]) -> Self {
        Self(Box::new(a))
    }
}

impl<T, const N: usize> TryFrom<Vec<T>> for Array<T, N> {
    type Error = String;
    fn try_from(v: Vec<T>) -> Result<Self, String> {
        let len = v.len();
        v.into_boxed_slice()
            .try_into()
            .map(Self)
            .map_err(|_| format!("invalid length {len}, expected an array of length {N}"))
    }
}

impl<T: Serialize, const N: usize> Serialize for Array<T, N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Array<T, N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<T>::deserialize(d)?;
        Self::try_from(v).map_err(serde::de::Error::custom)
    }
}

impl<T: Nested, const N: usize> Nested for Array<T, N> {
    type Elem = T::Elem;
    fn shape_of(v: Option<&Self>, out: &mut Vec<usize>) {
        out.push(N);
        T::shape_of(v.and_then(|v| v.first()), out);
    }
    fn fits(&self, shape: &[usize]) -> bool {
        shape.split_first().is_some_and(|(&n, inner)| n == N && self.0.iter().all(|item| item.fits(inner)))
    }
    fn flatten(self, out: &mut Vec<Self::Elem>) {
        Vec::from(self.0 as Box<[T]>).flatten(out);
    }
    fn unflatten(shape: &[usize], it: &mut std::vec::IntoIter<Self::Elem>) -> Result<Self, String> {
        match shape.first() {
            Some(&n) if n == N => Self::try_from(Vec::<T>::unflatten(shape, it)?),
            Some(&n) => Err(format!("dim of size {n} where the type fixes {N}")),
            None => Err("rank is lower than the type expects".into()),
        }
    }
}

/// What user code sees of the server: every registered model, callable with its typed input
/// through the same queue, batcher, limits and metrics as the HTTP routes.
#[derive(Clone)]
pub struct Context {
    state: std::sync::Arc<crate::AppState>,
}

impl Context {
    pub(crate) fn new(state: std::sync::Arc<crate::AppState>) -> Self {
        Self { state }
    }

    /// Runs model `M` (registered with [`crate::ServerBuilder::typed`] or
    /// [`crate::ServerBuilder::service`]) on a typed input.
    pub async fn infer<M: TypedModel>(&self, input: M::Input) -> Result<M::Output, crate::ApiError> {
        let model = std::sync::Arc::clone(self.state.model(M::NAME, None)?);
        crate::inference::run(&self.state, &model, run_typed::<M>(&model, input)).await
    }
}

/// A typed model's part of a request: its input as named tensors through the inference path,
/// and the outputs back as its output type.
pub(crate) async fn run_typed<M: TypedModel>(
    model: &crate::Model,
    input: M::Input,
) -> Result<M::Output, crate::ApiError> {
    use crate::ApiError;
    let tensors = input.into_tensors().map_err(ApiError::InvalidTensor)?;
    let wanted = model.outputs().iter().map(|s| s.name.clone()).collect();
    let outputs = crate::inference::infer(model, tensors, wanted).await?;
    M::Output::from_tensors(outputs).map_err(ApiError::Inference)
}

/// Custom processing in plain Rust: your own request and response types (with their schemas in
/// the OpenAPI document) around one or more models. Implement it for a `#[nimify]` struct and
/// register an instance with [`crate::ServerBuilder::service`] (the struct's fields are your
/// state: a tokenizer, a label list), or for any struct calling several models and register it
/// with [`crate::ServerBuilder::endpoint`] (a pipeline). Return [`crate::ApiError`]s for 4xx/5xx.
pub trait Process: Send + Sync + 'static {
    /// What clients send.
    type Request: serde::de::DeserializeOwned + utoipa::ToSchema + Send + 'static;
    /// What clients get back.
    type Response: Serialize + utoipa::ToSchema + Send + 'static;
    /// Handles one request; call models with [`Context::infer`].
    fn process(
        &self,
        ctx: &Context,
        request: Self::Request,
    ) -> impl std::future::Future<Output = Result<Self::Response, crate::ApiError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_round_trip_and_ragged_rows_are_refused() {
        let t = vec![[1.0f32, 2.0], [3.0, 4.0]].into_tensor().expect("tensor");
        assert_eq!(t.shape, vec![2, 2]);
        assert_eq!(<Vec<[f32; 2]>>::from_tensor(t).expect("back"), vec![[1.0, 2.0], [3.0, 4.0]]);
        // An empty batch keeps the fixed dims of its type.
        assert_eq!(Vec::<[f32; 4]>::new().into_tensor().expect("empty").shape, vec![0, 4]);
        let err = vec![vec![1i64, 2], vec![3]].into_tensor().expect_err("ragged");
        assert!(err.contains("ragged"), "{err}");
        let err = <Vec<[f32; 3]>>::from_tensor(Tensor::new(vec![1, 2], TensorData::F32(vec![1.0, 2.0])).expect("t"))
            .expect_err("dim");
        assert!(err.contains("size 2 where the type fixes 3"), "{err}");
    }
}
