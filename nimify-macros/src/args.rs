//! Parsing the attribute's options: `model = "..."`, `name = "..."`, `reference = "..."`,
//! `crate = path` and `dims("tensor" = ["batch", 22], ...)`.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitStr, Meta, MetaNameValue, Path, Token};

/// The options as written.
pub struct Args {
    /// The `model = "..."` literal (spans file errors).
    pub model: LitStr,
    /// `name = "..."`.
    pub name: Option<LitStr>,
    /// `crate = path`.
    pub krate: Option<Path>,
    /// `dims("tensor" = [...])`: dims that replace what the file declares for a tensor.
    pub dims: Vec<DimsOverride>,
    /// `reference = "x.profile.json"`: the drift reference profile, compiled in.
    pub reference: Option<LitStr>,
}

/// One tensor's dims as the service declares them, instead of the file.
pub struct DimsOverride {
    /// The tensor's exact name (spans errors about it).
    pub tensor: LitStr,
    /// Each dim: a size or a name.
    pub dims: Vec<DimSpec>,
}

/// One dim of an override.
pub enum DimSpec {
    /// A fixed size.
    Fixed(u64),
    /// A named (symbolic) dim.
    Named(String),
}

impl Parse for DimsOverride {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let tensor: LitStr = input.parse()?;
        input.parse::<Token![=]>()?;
        let list;
        syn::bracketed!(list in input);
        let items = Punctuated::<Lit, Token![,]>::parse_terminated(&list)?;
        let dims = items
            .iter()
            .map(|lit| match lit {
                Lit::Int(n) => n.base10_parse::<u64>().map(DimSpec::Fixed),
                Lit::Str(s) if !s.value().trim().is_empty() => Ok(DimSpec::Named(s.value())),
                other => Err(syn::Error::new_spanned(other, "a dim is a size (`22`) or a name (`\"batch\"`)")),
            })
            .collect::<syn::Result<Vec<_>>>()?;
        Ok(Self { tensor, dims })
    }
}

struct Raw(Punctuated<Meta, Token![,]>);

impl Parse for Raw {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        Ok(Raw(Punctuated::parse_terminated(input)?))
    }
}

fn lit_str(nv: &MetaNameValue) -> syn::Result<LitStr> {
    match &nv.value {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}

/// Parses the attribute, collecting every error (unknown or duplicate option, missing model).
pub fn parse(attr: TokenStream) -> syn::Result<Args> {
    let raw = Parser::parse2(Raw::parse, attr)?;
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let (mut model, mut name, mut krate, mut reference) = (None, None, None, None);
    let mut dims: Vec<DimsOverride> = Vec::new();
    for meta in &raw.0 {
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            Meta::List(list) if list.path.is_ident("dims") => {
                match list.parse_args_with(Punctuated::<DimsOverride, Token![,]>::parse_terminated) {
                    Ok(entries) => {
                        for entry in entries {
                            if dims.iter().any(|d| d.tensor.value() == entry.tensor.value()) {
                                push(syn::Error::new_spanned(
                                    &entry.tensor,
                                    format!("dims of {:?} are given twice", entry.tensor.value()),
                                ));
                            } else {
                                dims.push(entry);
                            }
                        }
                    }
                    Err(e) => push(e),
                }
                continue;
            }
            other => {
                push(syn::Error::new_spanned(
                    other,
                    "expected `option = value`, or `dims(\"tensor\" = [\"batch\", 22])`",
                ));
                continue;
            }
        };
        let key = nv.path.get_ident().map(ToString::to_string).unwrap_or_default();
        let dup = |what: &str| syn::Error::new_spanned(&nv.path, format!("duplicate option `{what}`"));
        match key.as_str() {
            "model" if model.is_some() => push(dup("model")),
            "model" => match lit_str(nv) {
                Ok(s) => model = Some(s),
                Err(e) => push(e),
            },
            "name" if name.is_some() => push(dup("name")),
            "name" => match lit_str(nv) {
                Ok(s) => name = Some(s),
                Err(e) => push(e),
            },
            "reference" if reference.is_some() => push(dup("reference")),
            "reference" => match lit_str(nv) {
                Ok(s) => reference = Some(s),
                Err(e) => push(e),
            },
            "crate" if krate.is_some() => push(dup("crate")),
            "crate" => match &nv.value {
                Expr::Path(p) => krate = Some(p.path.clone()),
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => match s.parse::<Path>() {
                    Ok(p) => krate = Some(p),
                    Err(e) => push(e),
                },
                other => push(syn::Error::new_spanned(other, "expected a path, e.g. `crate = ::nimify`")),
            },
            _ => push(syn::Error::new_spanned(
                &nv.path,
                format!("unknown option `{key}`; expected `model`, `name`, `reference`, `crate` or `dims(...)`"),
            )),
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }
    let model = model.ok_or_else(|| {
        syn::Error::new(Span::call_site(), "missing `model = \"path/to/model.onnx\"` (relative to Cargo.toml)")
    })?;
    Ok(Args { model, name, krate, dims, reference })
}
