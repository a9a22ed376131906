//! The IR: the model's signature resolved into what codegen needs (field names, element types,
//! dims), with every problem reported against the `model = "..."` literal or the tensor.

use std::path::PathBuf;

use nimify_model::decl::TensorDecl;
use nimify_model::{Dim, ModelInfo, ValueInfo, ValueType};
use syn::{Ident, LitStr};

use crate::args::{DimSpec, DimsOverride};

/// One typed service.
pub struct Service {
    /// The annotated struct.
    pub ident: Ident,
    /// Served model name.
    pub name: String,
    /// Absolute model path (resolved against `CARGO_MANIFEST_DIR`).
    pub path: PathBuf,
    /// Inputs in model order.
    pub inputs: Vec<Field>,
    /// Outputs in model order.
    pub outputs: Vec<Field>,
    /// Tensors whose dims the attribute declares instead of the file.
    pub overrides: Vec<(String, Vec<Dim>)>,
    /// The reference profile, checked against the signature: the path as written (what the
    /// server reports) and the absolute one (what is compiled in).
    pub reference: Option<(String, PathBuf)>,
}

impl Service {
    /// A service without tensors, generated next to a compile error so that code naming its
    /// types and traits does not fail a second time.
    pub fn stub(ident: Ident) -> Self {
        let name = ident.to_string();
        Self {
            ident,
            name,
            path: PathBuf::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            overrides: Vec::new(),
            reference: None,
        }
    }
}

/// One input or output.
pub struct Field {
    /// Rust field name.
    pub ident: Ident,
    /// The tensor's name and kind, by the rule the runtime checks the loaded model with.
    pub decl: TensorDecl,
}

/// Reads the model and builds the IR; errors point at `lit` (or at the override they concern).
pub fn lower(
    ident: Ident,
    model: &LitStr,
    name: Option<&LitStr>,
    dims: &[DimsOverride],
    reference: Option<&LitStr>,
) -> syn::Result<Service> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let path = normalize(&PathBuf::from(&manifest).join(model.value()));
    if !path.is_file() {
        return Err(syn::Error::new_spanned(model, format!("model file not found: {}", path.display())));
    }
    let mut info: ModelInfo = nimify_model::read_model(&path)
        .map_err(|e| syn::Error::new_spanned(model, format!("cannot read {}: {e}", path.display())))?;
    let overrides = apply_overrides(&mut info, dims)?;
    let reference = reference.map(|lit| check_reference(&manifest, lit, &info)).transpose()?;
    let mut errors: Option<syn::Error> = None;
    let mut fields = |values: &[ValueInfo], what: &str| {
        let mut used = Vec::new();
        let mut out = Vec::new();
        for v in values {
            match TensorDecl::classify(v) {
                Ok(decl) => out.push(Field { ident: field_ident(&v.name, &mut used), decl }),
                Err(msg) => {
                    let e = syn::Error::new_spanned(model, format!("{what} {:?}: {msg}", v.name));
                    match &mut errors {
                        Some(all) => all.combine(e),
                        None => errors = Some(e),
                    }
                }
            }
        }
        out
    };
    let inputs = fields(&info.inputs, "input");
    let outputs = fields(&info.outputs, "output");
    if let Some(e) = errors {
        return Err(e);
    }
    let served = name
        .map(LitStr::value)
        .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
    Ok(Service { ident, name: served, path, inputs, outputs, overrides, reference })
}

/// Reads the reference profile and checks it against the signature (overrides applied): a
/// profile made for another model does not compile.
fn check_reference(manifest: &str, lit: &LitStr, info: &ModelInfo) -> syn::Result<(String, PathBuf)> {
    let path = normalize(&PathBuf::from(manifest).join(lit.value()));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        syn::Error::new_spanned(lit, format!("cannot read the reference profile {}: {e}", path.display()))
    })?;
    let profile = nimify_model::profile::Profile::from_json(&text)
        .map_err(|e| syn::Error::new_spanned(lit, format!("reference profile {}: {e}", path.display())))?;
    profile.check_against(&info.inputs, &info.outputs).map_err(|problems| {
        syn::Error::new_spanned(
            lit,
            format!(
                "reference profile {} does not fit the model: {}; make one for this model with `cargo nimify profile`",
                path.display(),
                problems.join("; ")
            ),
        )
    })?;
    Ok((lit.value(), path))
}

/// Replaces the declared dims of each overridden tensor, which must be a dense tensor of the
/// model; returns the overrides as dims.
fn apply_overrides(info: &mut ModelInfo, dims: &[DimsOverride]) -> syn::Result<Vec<(String, Vec<Dim>)>> {
    let mut out = Vec::new();
    for o in dims {
        let wanted = o.tensor.value();
        let names: Vec<String> = info.inputs.iter().chain(&info.outputs).map(|v| format!("{:?}", v.name)).collect();
        let Some(value) = info.inputs.iter_mut().chain(info.outputs.iter_mut()).find(|v| v.name == wanted) else {
            return Err(syn::Error::new_spanned(
                &o.tensor,
                format!("the model has no tensor {wanted:?}; its inputs and outputs are {}", names.join(", ")),
            ));
        };
        let new: Vec<Dim> = o
            .dims
            .iter()
            .map(|d| match d {
                DimSpec::Fixed(n) => Dim::Fixed(*n),
                DimSpec::Named(s) => Dim::Symbolic(s.clone()),
            })
            .collect();
        match &mut value.ty {
            ValueType::Tensor { shape, .. } => *shape = Some(new.clone()),
            other => {
                return Err(syn::Error::new_spanned(
                    &o.tensor,
                    format!("{wanted:?} is a {}, not a tensor: only tensor dims can be overridden", other.onnx_type()),
                ));
            }
        }
        out.push((wanted, new));
    }
    Ok(out)
}

/// Removes `.` and `..` components lexically, so messages show the path a user would type.
fn normalize(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A snake_case identifier for a tensor name, unique within the struct.
fn field_ident(name: &str, used: &mut Vec<String>) -> Ident {
    let mut s = String::new();
    let mut prev_us = true;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase()
                && !prev_us
                && !s.is_empty()
                && s.chars().last().is_some_and(|p| p.is_ascii_lowercase())
            {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
            prev_us = false;
        } else if !prev_us {
            s.push('_');
            prev_us = true;
        }
    }
    let mut s = s.trim_end_matches('_').to_string();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("t_{s}");
    }
    if syn::parse_str::<Ident>(&s).is_err() {
        s.push('_');
    }
    let base = s.clone();
    let mut n = 2;
    while used.contains(&s) {
        s = format!("{base}_{n}");
        n += 1;
    }
    used.push(s.clone());
    Ident::new(&s, proc_macro2::Span::call_site())
}

#[cfg(test)]
mod tests {
    use super::field_ident;

    #[test]
    fn odd_tensor_names_become_identifiers() {
        let mut used = Vec::new();
        let names: Vec<String> =
            ["input/0:x.y", "it's \"quoted\"", "X", "X", "123", "type", "outputProbability", "with space.v2"]
                .iter()
                .map(|n| field_ident(n, &mut used).to_string())
                .collect();
        assert_eq!(
            names,
            ["input_0_x_y", "it_s_quoted", "x", "x_2", "t_123", "type_", "output_probability", "with_space_v2"]
        );
    }
}
