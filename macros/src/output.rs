//! `#[derive(GraphOutput)]`: structs of arrays as graph outputs.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput};

pub fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let name = &input.ident;
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            input.generics.span(),
            "#[derive(GraphOutput)] does not support generic parameters",
        ));
    }
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            name.span(),
            "#[derive(GraphOutput)] works on structs of arrays",
        ));
    };
    let members: Vec<syn::Member> = data
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| match &f.ident {
            Some(ident) => ident.clone().into(),
            None => syn::Index::from(i).into(),
        })
        .collect();
    let types: Vec<&syn::Type> = data.fields.iter().map(|f| &f.ty).collect();
    // A `Vec<Array>` takes every remaining output, so only the last field may be one.
    for ty in types.iter().rev().skip(1) {
        if let syn::Type::Path(p) = ty {
            if p.path.segments.last().is_some_and(|s| s.ident == "Vec") {
                return Err(syn::Error::new(
                    ty.span(),
                    "a `Vec` field takes all the remaining outputs: make it the last field",
                ));
            }
        }
    }
    let flatten = members.iter().zip(&types).map(|(m, ty)| {
        quote_spanned! {ty.span()=> <#ty as ::mlx::graph::GraphOutput>::flatten(self.#m, out); }
    });
    let unflatten = members.iter().zip(&types).map(|(m, ty)| {
        quote_spanned! {ty.span()=> #m: <#ty as ::mlx::graph::GraphOutput>::unflatten(arrays) }
    });
    let failed = members.iter().zip(&types).map(|(m, ty)| {
        quote_spanned! {ty.span()=> #m: <#ty as ::mlx::graph::GraphOutput>::failed(error) }
    });
    Ok(quote! {
        impl ::mlx::graph::GraphOutput for #name {
            fn flatten(self, out: &mut ::std::vec::Vec<::mlx::Array>) {
                #(#flatten)*
            }

            fn unflatten(arrays: &mut ::std::vec::IntoIter<::mlx::Array>) -> Self {
                Self { #(#unflatten,)* }
            }

            fn failed(error: &::mlx::Error) -> Self {
                Self { #(#failed,)* }
            }
        }
    })
}
