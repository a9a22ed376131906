//! Typed values to and from [`Tensor`]s: scalars ([`Element`]), nested arrays and vectors
//! ([`Nested`]), any-rank tensors ([`Dyn`]), arrays longer than serde supports ([`Array`]) and
//! scikit-learn's map rows, each as a [`TensorField`] of a generated struct.

use std::collections::BTreeMap;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::tensor::{Tensor, TensorData};

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
