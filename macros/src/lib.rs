//! Procedural macros of the `mlx` crate, re-exported by it: `#[mlx::graph]`,
//! `#[derive(mlx::Module)]` and `#[derive(mlx::GraphOutput)]`.

mod module;
mod output;

use proc_macro::TokenStream;

/// Implements `mlx::Module` for a struct of weights, or an enum whose variants each hold one
/// module. See `mlx::module` for the field attributes `#[weight("name")]` and
/// `#[weight(skip)]`.
#[proc_macro_derive(Module, attributes(weight))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    module::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

mod graph;

/// Compiles a function, or a `&self` method, into an MLX graph traced once per input
/// signature. See the `mlx` crate documentation.
#[proc_macro_attribute]
pub fn graph(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let item2 = proc_macro2::TokenStream::from(item.clone());
    let result = match syn::parse::<syn::ItemFn>(item) {
        Ok(item) => graph::expand(attr, item),
        Err(_) => Err(graph::misplaced(
            item2
                .clone()
                .into_iter()
                .next()
                .map_or_else(proc_macro2::Span::call_site, |t| t.span()),
        )),
    };
    match result {
        Ok(tokens) => tokens.into(),
        // Keep the item as written next to the error, so that the error is the only one
        // (no knock-on "unused import" or "cannot find function").
        Err(error) => {
            let mut tokens = error.into_compile_error();
            tokens.extend(graph::strip_graph_attrs(item2));
            tokens.into()
        }
    }
}

/// Lets a struct of arrays (fields that are `Array`s, tuples, `Vec<Array>` or other such
/// structs) be returned from an `#[mlx::graph]` function. A `Vec<Array>` field takes all the
/// remaining outputs, so it must be the last field.
#[proc_macro_derive(GraphOutput)]
pub fn derive_graph_output(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    output::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
