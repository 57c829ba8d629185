//! `#[derive(Module)]`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Field, Fields, LitStr};

/// How one field takes part in the module.
enum Role {
    /// Weights under this path segment.
    Weights(String),
    /// Configuration: cloned on rebuild, part of the structure key.
    Skip,
}

pub fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(Module)] does not support generic parameters; write the module with \
             concrete field types",
        ));
    }
    let name = &input.ident;
    let body = match &input.data {
        Data::Struct(data) => expand_struct(name, &data.fields)?,
        Data::Enum(data) => expand_enum(name, data)?,
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span(),
                "#[derive(Module)] works on structs and enums, not unions",
            ))
        }
    };
    Ok(quote! {
        impl ::mlx::Module for #name {
            #body
        }
    })
}

fn role(field: &Field, index: usize) -> syn::Result<Role> {
    let mut role = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("weight")) {
        if role.is_some() {
            return Err(syn::Error::new(
                attr.span(),
                "duplicate #[weight(...)] attribute",
            ));
        }
        let malformed = || {
            syn::Error::new(
                attr.meta.span(),
                "expected #[weight(\"checkpoint.name\")] or #[weight(skip)]",
            )
        };
        let list = attr.meta.require_list().map_err(|_| malformed())?;
        if let Ok(name) = syn::parse2::<LitStr>(list.tokens.clone()) {
            if name.value().is_empty() {
                return Err(syn::Error::new(
                    name.span(),
                    "the checkpoint name must not be empty",
                ));
            }
            role = Some(Role::Weights(name.value()));
        } else if let Ok(ident) = syn::parse2::<syn::Ident>(list.tokens.clone()) {
            if ident != "skip" {
                return Err(malformed());
            }
            role = Some(Role::Skip);
        } else {
            return Err(malformed());
        }
    }
    Ok(role.unwrap_or_else(|| {
        Role::Weights(match &field.ident {
            Some(ident) => ident.to_string().trim_start_matches("r#").to_string(),
            None => index.to_string(),
        })
    }))
}

fn expand_struct(name: &syn::Ident, fields: &Fields) -> syn::Result<TokenStream> {
    let mut paths = std::collections::HashSet::new();
    let mut visit = Vec::new();
    let mut rebuild = Vec::new();
    let mut load = Vec::new();
    let mut structure = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let member: syn::Member = match &field.ident {
            Some(ident) => ident.clone().into(),
            None => syn::Index::from(i).into(),
        };
        let ty = &field.ty;
        match role(field, i)? {
            Role::Weights(path) => {
                if !paths.insert(path.clone()) {
                    return Err(syn::Error::new(
                        field.span(),
                        format!("two fields load from the checkpoint path `{path}`"),
                    ));
                }
                // The span points errors about the field's type (not a module) at the field.
                visit.push(quote_spanned! {ty.span()=>
                    <#ty as ::mlx::Module>::visit(&self.#member, &::mlx::module::join_path(prefix, #path), f);
                });
                rebuild.push(quote_spanned! {ty.span()=>
                    #member: <#ty as ::mlx::Module>::rebuild(&self.#member, arrays)
                });
                load.push(quote_spanned! {ty.span()=>
                    <#ty as ::mlx::Module>::load_from(&mut self.#member, &::mlx::module::join_path(prefix, #path), source, report);
                });
                let label = format!("{path}=");
                structure.push(quote_spanned! {ty.span()=>
                    out.push_str(#label);
                    <#ty as ::mlx::Module>::structure(&self.#member, out);
                    out.push(',');
                });
            }
            Role::Skip => {
                if let syn::Type::Path(p) = ty {
                    if p.path.segments.last().is_some_and(|s| s.ident == "Array") {
                        return Err(syn::Error::new(
                            ty.span(),
                            "an array is a weight, not configuration: remove #[weight(skip)] \
                             (skipped fields are baked into compiled graphs as constants)",
                        ));
                    }
                }
                let label = format!("{}=", member_label(&member));
                rebuild.push(quote_spanned! {ty.span()=>
                    #member: ::core::clone::Clone::clone(&self.#member)
                });
                structure.push(quote_spanned! {ty.span()=>
                    out.push_str(#label);
                    out.push_str(&::std::format!("{:?}", &self.#member));
                    out.push(',');
                });
            }
        }
    }
    let name_str = name.to_string();
    Ok(quote! {
        fn visit<'mlx_a>(&'mlx_a self, prefix: &str, f: &mut dyn FnMut(&str, &'mlx_a ::mlx::Array)) {
            let _ = (&prefix, &f);
            #(#visit)*
        }

        fn rebuild(&self, arrays: &mut dyn ::core::iter::Iterator<Item = ::mlx::Array>) -> Self {
            let _ = &arrays;
            Self { #(#rebuild,)* }
        }

        fn load_from(
            &mut self,
            prefix: &str,
            source: &mut ::mlx::io::Checkpoint,
            report: &mut ::mlx::module::LoadReport,
        ) {
            let _ = (&prefix, &source, &report);
            #(#load)*
        }

        fn structure(&self, out: &mut ::std::string::String) {
            out.push_str(#name_str);
            out.push('{');
            #(#structure)*
            out.push('}');
        }
    })
}

fn member_label(member: &syn::Member) -> String {
    match member {
        syn::Member::Named(ident) => ident.to_string(),
        syn::Member::Unnamed(index) => index.index.to_string(),
    }
}

fn expand_enum(name: &syn::Ident, data: &syn::DataEnum) -> syn::Result<TokenStream> {
    let mut visit = Vec::new();
    let mut rebuild = Vec::new();
    let mut load = Vec::new();
    let mut structure = Vec::new();
    for variant in &data.variants {
        let v = &variant.ident;
        let single =
            match &variant.fields {
                Fields::Unnamed(fields) if fields.unnamed.len() == 1 => &fields.unnamed[0],
                _ => return Err(syn::Error::new(
                    variant.span(),
                    "each variant of a Module enum holds exactly one module, as in `Dense(Linear)`",
                )),
            };
        if let Some(attr) = single.attrs.iter().find(|a| a.path().is_ident("weight")) {
            return Err(syn::Error::new(
                attr.span(),
                "#[weight(...)] does not apply inside an enum variant: the variant's module sits \
                 at the enum's own path",
            ));
        }
        let ty = &single.ty;
        let m = format_ident!("m");
        visit.push(quote_spanned! {ty.span()=> #name::#v(#m) => <#ty as ::mlx::Module>::visit(#m, prefix, f), });
        rebuild.push(quote! { #name::#v(#m) => #name::#v(::mlx::Module::rebuild(#m, arrays)), });
        load.push(
            quote! { #name::#v(#m) => ::mlx::Module::load_from(#m, prefix, source, report), },
        );
        let label = format!("{name}::{v}(");
        structure.push(quote! {
            #name::#v(#m) => {
                out.push_str(#label);
                ::mlx::Module::structure(#m, out);
                out.push(')');
            }
        });
    }
    Ok(quote! {
        fn visit<'mlx_a>(&'mlx_a self, prefix: &str, f: &mut dyn FnMut(&str, &'mlx_a ::mlx::Array)) {
            match self { #(#visit)* }
        }

        fn rebuild(&self, arrays: &mut dyn ::core::iter::Iterator<Item = ::mlx::Array>) -> Self {
            match self { #(#rebuild)* }
        }

        fn load_from(
            &mut self,
            prefix: &str,
            source: &mut ::mlx::io::Checkpoint,
            report: &mut ::mlx::module::LoadReport,
        ) {
            match self { #(#load)* }
        }

        fn structure(&self, out: &mut ::std::string::String) {
            match self { #(#structure)* }
        }
    })
}
