//! Code generation from the IR. Generated code names only the `nimify` crate (or the `crate =`
//! override), `::core` and `::std`, and lives in `const _: () = { ... }` where it can.

use nimify_model::{Dim, ElementType};
use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};
use syn::{ItemStruct, Path};

use nimify_model::decl::DeclKind;

use crate::ir::{Field, Service};

/// Entry point: parse, lower, generate; on error, the struct unchanged, stub `<Name>Input` /
/// `<Name>Output` types with every impl, and the `compile_error!`s.
pub fn nimify(attr: TokenStream, item: TokenStream) -> TokenStream {
    let strukt: ItemStruct = match syn::parse2(item.clone()) {
        Ok(s) => s,
        Err(_) => {
            let err = syn::Error::new_spanned(&item, "#[nimify] goes on a struct (unit, or with fields holding state)")
                .to_compile_error();
            return quote! { #item #err };
        }
    };
    let args = crate::args::parse(attr);
    let krate = args.as_ref().ok().and_then(|a| a.krate.clone()).unwrap_or_else(|| syn::parse_quote!(::nimify));
    let result = args.and_then(|args| {
        crate::ir::lower(strukt.ident.clone(), &args.model, args.name.as_ref(), &args.dims, args.reference.as_ref())
            .map(|svc| generate(&strukt, &svc, &krate))
    });
    match result {
        Ok(tokens) => tokens,
        // Fallback (as thiserror's): the struct, empty `<Name>Input` / `<Name>Output` structs and
        // every impl, so user code naming them still resolves and the one error is all there is.
        Err(e) => {
            let err = e.to_compile_error();
            let stub = generate(&strukt, &crate::ir::Service::stub(strukt.ident.clone()), &krate);
            quote! { #stub #err }
        }
    }
}

fn elem_type(krate: &Path, e: ElementType) -> TokenStream {
    match e {
        ElementType::Float => quote!(f32),
        ElementType::Double => quote!(f64),
        ElementType::Float16 => quote!(#krate::__private::half::f16),
        ElementType::Bfloat16 => quote!(#krate::__private::half::bf16),
        ElementType::Int8 => quote!(i8),
        ElementType::Int16 => quote!(i16),
        ElementType::Int32 => quote!(i32),
        ElementType::Int64 => quote!(i64),
        ElementType::Uint8 => quote!(u8),
        ElementType::Uint16 => quote!(u16),
        ElementType::Uint32 => quote!(u32),
        ElementType::Uint64 => quote!(u64),
        ElementType::Bool => quote!(bool),
        _ => quote!(::std::string::String),
    }
}

fn elem_value(krate: &Path, e: ElementType) -> TokenStream {
    let variant = format_ident!("{}", format!("{e:?}"));
    quote!(#krate::__private::ElementType::#variant)
}

fn dims_value(krate: &Path, dims: &[Dim]) -> TokenStream {
    let items = dims.iter().map(|d| match d {
        Dim::Fixed(n) => {
            let n = Literal::u64_suffixed(*n);
            quote!(#krate::__private::Dim::Fixed(#n))
        }
        Dim::Symbolic(s) => quote!(#krate::__private::Dim::Symbolic(::std::string::String::from(#s))),
        Dim::Unknown => quote!(#krate::__private::Dim::Unknown),
    });
    quote!(::std::vec![#(#items),*])
}

/// serde implements arrays up to this length; longer fixed dims use `nimify::typed::Array`.
const SERDE_ARRAY_MAX: u64 = 32;

/// The Rust type of a field: fixed dims become arrays, the others `Vec`s.
fn field_type(krate: &Path, kind: &DeclKind) -> TokenStream {
    match kind {
        DeclKind::Tensor(elem, dims) => dims.iter().rev().fold(elem_type(krate, *elem), |inner, d| match d {
            Dim::Fixed(n) if *n > SERDE_ARRAY_MAX => {
                let n = Literal::usize_unsuffixed(usize::try_from(*n).unwrap_or(usize::MAX));
                quote!(#krate::typed::Array<#inner, #n>)
            }
            Dim::Fixed(n) => {
                let n = Literal::usize_unsuffixed(usize::try_from(*n).unwrap_or(usize::MAX));
                quote!([#inner; #n])
            }
            _ => quote!(::std::vec::Vec<#inner>),
        }),
        DeclKind::AnyRank(elem) => {
            let t = elem_type(krate, *elem);
            quote!(#krate::typed::Dyn<#t>)
        }
        DeclKind::MapRows(key, value) => {
            let (k, v) = (elem_type(krate, *key), elem_type(krate, *value));
            quote!(::std::vec::Vec<::std::collections::BTreeMap<#k, #v>>)
        }
    }
}

fn decl(krate: &Path, f: &Field) -> TokenStream {
    let name = &f.decl.name;
    match &f.decl.kind {
        DeclKind::Tensor(elem, dims) => {
            let (e, d) = (elem_value(krate, *elem), dims_value(krate, dims));
            quote!(#krate::__private::TensorDecl::tensor(#name, #e, #d))
        }
        DeclKind::AnyRank(elem) => {
            let e = elem_value(krate, *elem);
            quote!(#krate::__private::TensorDecl::any_rank(#name, #e))
        }
        DeclKind::MapRows(key, value) => {
            let (k, v) = (elem_value(krate, *key), elem_value(krate, *value));
            quote!(#krate::__private::TensorDecl::map_rows(#name, #k, #v))
        }
    }
}

fn io_struct(strukt: &ItemStruct, krate: &Path, ident: &syn::Ident, fields: &[Field], doc: &str) -> TokenStream {
    let vis = &strukt.vis;
    let serde_crate = format!("{}::__private::serde", quote!(#krate).to_string().replace(' ', ""));
    let defs = fields.iter().map(|f| {
        let (fid, name, ty) = (&f.ident, &f.decl.name, field_type(krate, &f.decl.kind));
        let doc = format!("Tensor `{name}`.");
        quote! {
            #[doc = #doc]
            #[serde(rename = #name)]
            pub #fid: #ty
        }
    });
    quote! {
        #[doc = #doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::cmp::PartialEq, #krate::__private::serde::Serialize, #krate::__private::serde::Deserialize)]
        #[serde(crate = #serde_crate, deny_unknown_fields)]
        #vis struct #ident {
            #(#defs,)*
        }
    }
}

/// Everything generated for one service.
pub fn generate(strukt: &ItemStruct, svc: &Service, krate: &Path) -> TokenStream {
    let ident = &svc.ident;
    let input = format_ident!("{}Input", ident);
    let output = format_ident!("{}Output", ident);
    let name = &svc.name;
    let path = svc.path.display().to_string();
    let input_struct =
        io_struct(strukt, krate, &input, &svc.inputs, &format!("Inputs of model `{name}`, one field per tensor."));
    let output_struct =
        io_struct(strukt, krate, &output, &svc.outputs, &format!("Outputs of model `{name}`, one field per tensor."));
    let input_decls = svc.inputs.iter().map(|f| decl(krate, f));
    let output_decls = svc.outputs.iter().map(|f| decl(krate, f));
    let into = svc.inputs.iter().map(|f| {
        let (fid, n) = (&f.ident, &f.decl.name);
        quote!((::std::string::String::from(#n), #krate::__private::TensorField::into_tensor(self.#fid).map_err(|e| ::std::format!("input {:?}: {}", #n, e))?))
    });
    let from = svc.outputs.iter().map(|f| {
        let (fid, n) = (&f.ident, &f.decl.name);
        quote!(#fid: outputs.take(#n)?)
    });
    let in_schema = svc.inputs.iter().map(|f| {
        let (n, d) = (&f.decl.name, decl(krate, f));
        quote!((#n, #krate::__private::tensor_schema(&#d)))
    });
    let out_schema = svc.outputs.iter().map(|f| {
        let (n, d) = (&f.decl.name, decl(krate, f));
        quote!((#n, #krate::__private::tensor_schema(&#d)))
    });
    let input_name = input.to_string();
    let output_name = output.to_string();
    let reference = match &svc.reference {
        Some((written, p)) => {
            let p = p.display().to_string();
            quote!(::core::option::Option::Some((#written, ::core::include_str!(#p))))
        }
        None => quote!(::core::option::Option::None),
    };
    let overrides = svc.overrides.iter().map(|(n, d)| {
        let d = dims_value(krate, d);
        quote!((::std::string::String::from(#n), #d))
    });
    quote! {
        #strukt
        #input_struct
        #output_struct
        const _: () = {
            impl #krate::__private::TypedModel for #ident {
                type Input = #input;
                type Output = #output;
                const NAME: &'static str = #name;
                const MODEL_PATH: &'static str = #path;
                fn signature() -> #krate::__private::Signature {
                    #krate::__private::Signature {
                        inputs: ::std::vec![#(#input_decls),*],
                        outputs: ::std::vec![#(#output_decls),*],
                        dims_overrides: ::std::vec![#(#overrides),*],
                        reference: #reference,
                    }
                }
            }
            impl #krate::__private::IntoTensors for #input {
                fn into_tensors(self) -> ::core::result::Result<::std::vec::Vec<(::std::string::String, #krate::__private::Tensor)>, ::std::string::String> {
                    ::core::result::Result::Ok(::std::vec![#(#into),*])
                }
            }
            impl #krate::__private::FromTensors for #output {
                fn from_tensors(outputs: ::std::vec::Vec<(::std::string::String, #krate::__private::Tensor)>) -> ::core::result::Result<Self, ::std::string::String> {
                    let mut outputs = #krate::__private::OutputMap::new(outputs);
                    ::core::result::Result::Ok(Self { #(#from),* })
                }
            }
            impl #krate::__private::utoipa::PartialSchema for #input {
                fn schema() -> #krate::__private::utoipa::openapi::RefOr<#krate::__private::utoipa::openapi::schema::Schema> {
                    #krate::__private::object_schema(::std::vec![#(#in_schema),*])
                }
            }
            impl #krate::__private::utoipa::ToSchema for #input {
                fn name() -> ::std::borrow::Cow<'static, str> { ::std::borrow::Cow::Borrowed(#input_name) }
            }
            impl #krate::__private::utoipa::PartialSchema for #output {
                fn schema() -> #krate::__private::utoipa::openapi::RefOr<#krate::__private::utoipa::openapi::schema::Schema> {
                    #krate::__private::object_schema(::std::vec![#(#out_schema),*])
                }
            }
            impl #krate::__private::utoipa::ToSchema for #output {
                fn name() -> ::std::borrow::Cow<'static, str> { ::std::borrow::Cow::Borrowed(#output_name) }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    /// The expansion as a reader sees it, with the machine-specific model path replaced.
    fn expand(attr: proc_macro2::TokenStream, item: proc_macro2::TokenStream) -> String {
        let out = super::nimify(attr, item);
        let file: syn::File = syn::parse2(out).expect("expansion parses as a file");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").display().to_string();
        prettyplease::unparse(&file).replace(&root, "$WORKSPACE")
    }

    #[test]
    fn plain_service() {
        insta::assert_snapshot!(expand(
            quote!(model = "../tests/models/mlp.onnx"),
            quote!(
                pub struct Mlp;
            )
        ));
    }

    #[test]
    fn odd_names_scalars_and_map_rows() {
        insta::assert_snapshot!(
            "odd_names",
            expand(
                quote!(model = "../tests/models/odd_names.onnx", crate = ::my_nimify),
                quote!(
                    pub(crate) struct Odd;
                )
            )
        );
        insta::assert_snapshot!(
            "zipmap",
            expand(
                quote!(model = "../tests/models/zipmap.onnx", name = "iris"),
                quote!(
                    struct Iris {
                        labels: Vec<String>,
                    }
                )
            )
        );
    }

    #[test]
    fn errors_keep_the_struct() {
        let out = expand(
            quote!(model = "../tests/models/missing.onnx"),
            quote!(
                pub struct Gone;
            ),
        );
        assert!(out.contains("pub struct Gone;"), "{out}");
        assert!(out.contains("pub struct GoneInput {}") && out.contains("pub struct GoneOutput {}"), "{out}");
        assert!(out.contains("compile_error!"), "{out}");
        assert!(out.contains("model file not found: $WORKSPACE/tests/models/missing.onnx"), "{out}");
    }
}
