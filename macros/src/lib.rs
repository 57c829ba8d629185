//! Procedural macros of the `mlx` crate, re-exported by it: `#[derive(mlx::Module)]`.

mod module;

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
