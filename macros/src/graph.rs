//! `#[mlx::graph]`: a function or `&self` method compiled by MLX once per signature.
//!
//! Parameters are sorted by type: integers, floats, bools and chars (and parameters marked
//! `#[mlx(static)]`) are *static*: part of the cache key, fixed inside the trace. Every other
//! parameter must be a `Module` (`&Array`, `Array`, `&Vec<Array>`, `&Linear`, tuples...),
//! plus two borrowed forms converted on the way in: `&[Array]` and `Option<&Array>`. Module
//! arguments are flattened into the compiled closure's inputs and rebuilt from tracers.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{FnArg, ItemFn, Pat, ReturnType, Signature, Token, Type};

/// The options of `#[mlx::graph(...)]`.
#[derive(Default)]
struct Options {
    shapeless: bool,
}

fn parse_options(attr: TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let mut seen = Vec::<String>::new();
    let idents = Punctuated::<syn::Ident, Token![,]>::parse_terminated.parse2(attr)?;
    for ident in idents {
        let name = ident.to_string();
        if seen.contains(&name) {
            return Err(syn::Error::new(
                ident.span(),
                format!("duplicate option `{name}`"),
            ));
        }
        match name.as_str() {
            "shapeless" => options.shapeless = true,
            _ => {
                return Err(syn::Error::new(
                    ident.span(),
                    format!("unknown option `{name}`: the only option is `shapeless`"),
                ))
            }
        }
        seen.push(name);
    }
    Ok(options)
}

/// How a parameter reaches the compiled closure.
enum Kind {
    /// Part of the cache key; copied (or cloned) into the trace.
    Static,
    /// A `Module` passed by reference (`&T`): flattened, rebuilt as `T`, passed as `&T`.
    ModuleRef,
    /// A `Module` passed by value.
    ModuleValue,
    /// `&[Array]`: converted to `Vec<Array>`, passed as a slice.
    Slice,
    /// `Option<&Array>`: converted to `Option<Array>`, passed as `Option<&Array>`.
    OptionRef,
}

struct Param {
    name: syn::Ident,
    /// Declared `mut`: kept on the body's parameter, dropped from the wrapper's.
    mutable: bool,
    ty: Type,
    kind: Kind,
}

const STATIC_TYPES: &[&str] = &[
    "i8", "i16", "i32", "i64", "i128", "isize", "u8", "u16", "u32", "u64", "u128", "usize", "f32",
    "f64", "bool", "char",
];

fn is_path(ty: &Type, names: &[&str]) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.arguments.is_empty() && names.iter().any(|n| s.ident == n)),
        _ => false,
    }
}

fn classify(ty: &Type, marked_static: bool) -> syn::Result<Kind> {
    if marked_static || is_path(ty, STATIC_TYPES) {
        return Ok(Kind::Static);
    }
    match ty {
        Type::Reference(r) if r.mutability.is_some() => Err(syn::Error::new(
            r.span(),
            "a compiled graph cannot mutate its arguments: take `&` and return the new value",
        )),
        Type::Reference(r) => match &*r.elem {
            Type::Slice(s) if is_path(&s.elem, &["Array"]) => Ok(Kind::Slice),
            Type::Slice(s) => Err(syn::Error::new(
                s.span(),
                "a slice of modules cannot be a graph argument: pass `&Vec<_>` of them",
            )),
            Type::Path(p) if p.path.is_ident("str") => Err(unsupported(ty)),
            _ => Ok(Kind::ModuleRef),
        },
        Type::Path(p) => {
            let last = p.path.segments.last();
            if let Some(seg) = last.filter(|s| s.ident == "Option") {
                if let syn::PathArguments::AngleBracketed(args) = &seg.arguments {
                    if let Some(syn::GenericArgument::Type(Type::Reference(r))) = args.args.first()
                    {
                        if r.mutability.is_none() && is_path(&r.elem, &["Array"]) {
                            return Ok(Kind::OptionRef);
                        }
                        return Err(syn::Error::new(
                            r.span(),
                            "`Option<&_>` of a module cannot be a graph argument: pass \
                             `&Option<_>` instead",
                        ));
                    }
                }
            }
            if last.is_some_and(|s| s.ident == "String") {
                return Err(unsupported(ty));
            }
            Ok(Kind::ModuleValue)
        }
        Type::Tuple(_) | Type::Paren(_) | Type::Group(_) => Ok(Kind::ModuleValue),
        _ => Err(unsupported(ty)),
    }
}

/// Static arguments live in the cache key and in the compiled closure: they must be owned,
/// and arrays are inputs, never statics (their values would be baked into the graph).
fn check_static_type(ty: &Type) -> syn::Result<()> {
    if let Type::Reference(r) = ty {
        return Err(syn::Error::new(
            r.span(),
            "a #[mlx(static)] argument must be an owned value (it is kept in the compiled \
             closure): take it by value",
        ));
    }
    if is_path(ty, &["Array"]) {
        return Err(syn::Error::new(
            ty.span(),
            "an array cannot be static: its values would be baked into the compiled graph; \
             remove #[mlx(static)] to pass it as an input",
        ));
    }
    Ok(())
}

fn unsupported(ty: &Type) -> syn::Error {
    syn::Error::new(
        ty.span(),
        "unsupported argument type for an #[mlx::graph] function: pass arrays and modules \
         (`&Array`, `&[Array]`, `Option<&Array>`, `&Linear`, tuples of them) or static \
         integers, floats and bools; mark other static values #[mlx(static)]",
    )
}

fn take_static_marker(attrs: &mut Vec<syn::Attribute>) -> syn::Result<bool> {
    let mut marked = false;
    let mut error = None;
    attrs.retain(|attr| {
        if !attr.path().is_ident("mlx") {
            return true;
        }
        match attr.parse_args::<Token![static]>() {
            Ok(_) => marked = true,
            Err(_) => {
                error = Some(syn::Error::new(
                    attr.span(),
                    "expected #[mlx(static)] on a graph parameter",
                ))
            }
        }
        false
    });
    match error {
        Some(e) => Err(e),
        None => Ok(marked),
    }
}

/// Rejects what cannot work inside a compiled graph, with a span and what to do instead.
fn check_signature(sig: &Signature) -> syn::Result<()> {
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(
            asyncness.span(),
            "an #[mlx::graph] function cannot be async: a graph is built synchronously; \
             await outside and pass the arrays in",
        ));
    }
    let only_lifetimes = sig
        .generics
        .params
        .iter()
        .all(|p| matches!(p, syn::GenericParam::Lifetime(_)));
    if !sig.generics.params.is_empty() && only_lifetimes {
        return Err(syn::Error::new(
            sig.generics.span(),
            "an #[mlx::graph] function cannot name lifetimes: use elided references \
             (`&Array`); its outputs are new arrays that borrow nothing",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "an #[mlx::graph] function cannot be generic: each compiled graph has concrete \
             types; write one function per type, or call a generic helper from a concrete graph",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new(
            variadic.span(),
            "variadic functions cannot be graphs",
        ));
    }
    if let ReturnType::Default = sig.output {
        return Err(syn::Error::new(
            sig.ident.span(),
            "an #[mlx::graph] function must return its results: `-> Array`, `-> Vec<Array>` \
             or a tuple of those",
        ));
    }
    Ok(())
}

/// Finds host reads in the body: they need data, and a tracer has none.
struct HostReads {
    error: Option<syn::Error>,
}

impl<'ast> Visit<'ast> for HostReads {
    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        let name = call.method.to_string();
        // `to_vec` also copies slices (`x.shape().to_vec()`): only the turbofish form
        // (`.to_vec::<f32>()`) is certainly a read of array data.
        let reads = match name.as_str() {
            "item" | "eval" | "async_eval" => true,
            "to_vec" => call.turbofish.is_some(),
            _ => false,
        };
        if self.error.is_none() && reads {
            self.error = Some(syn::Error::new(
                call.method.span(),
                format!(
                    "`.{name}()` reads data, and inside an #[mlx::graph] arrays are tracers with \
                     no data: return the array and read it after the call (or debug with \
                     mlx::compile::set_eager(true))"
                ),
            ));
        }
        syn::visit::visit_expr_method_call(self, call);
    }

    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        if let syn::Expr::Path(path) = &*call.func {
            if let Some(last) = path.path.segments.last() {
                let name = last.ident.to_string();
                if self.error.is_none() && matches!(name.as_str(), "eval" | "async_eval") {
                    self.error = Some(syn::Error::new(
                        path.span(),
                        format!(
                            "`{name}` inside an #[mlx::graph] cannot run: the graph is evaluated \
                             by whoever uses its outputs; evaluate after the call"
                        ),
                    ));
                }
            }
        }
        syn::visit::visit_expr_call(self, call);
    }

    // Items nested in the body are not part of the traced function.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

fn check_body(block: &syn::Block) -> syn::Result<()> {
    let mut visitor = HostReads { error: None };
    visitor.visit_block(block);
    visitor.error.map_or(Ok(()), Err)
}

/// Parameters of a signature, classified; `self` excluded (reported by `has_self`).
fn params(sig: &mut Signature) -> syn::Result<(Vec<Param>, bool)> {
    let mut out = Vec::new();
    let mut has_self = false;
    for input in sig.inputs.iter_mut() {
        match input {
            FnArg::Receiver(r) => {
                let shared_ref = match (&r.reference, r.colon_token) {
                    (Some(_), _) => r.mutability.is_none(),
                    // `self: &Self`
                    (None, Some(_)) => {
                        matches!(&*r.ty, Type::Reference(t) if t.mutability.is_none())
                    }
                    (None, None) => false,
                };
                if !shared_ref {
                    return Err(syn::Error::new(
                        r.span(),
                        "an #[mlx::graph] method takes `&self`: a compiled graph cannot \
                         mutate or consume its module; return new values instead",
                    ));
                }
                has_self = true;
            }
            FnArg::Typed(pat_type) => {
                let marked = take_static_marker(&mut pat_type.attrs)?;
                let (name, mutable) =
                    match &mut *pat_type.pat {
                        Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none() => {
                            // The wrapper only forwards the value: `mut` belongs to the body.
                            (ident.ident.clone(), ident.mutability.take().is_some())
                        }
                        other => return Err(syn::Error::new(
                            other.span(),
                            "graph parameters must be plain names (destructure inside the body)",
                        )),
                    };
                if marked {
                    check_static_type(&pat_type.ty)?;
                }
                let kind = classify(&pat_type.ty, marked)?;
                out.push(Param {
                    name,
                    mutable,
                    ty: (*pat_type.ty).clone(),
                    kind,
                });
            }
        }
    }
    Ok((out, has_self))
}

/// The wrapper body shared by functions and methods: the cache key, the flattened inputs,
/// and the trace closure, which rebuilds the arguments from tracers (bound to the parameter
/// names) and runs `traced_call`. `eager_call` runs instead in eager mode.
fn wrapper(
    name: &str,
    options: &Options,
    params: &[Param],
    has_self: bool,
    eager_call: TokenStream,
    traced_call: TokenStream,
    output: &Type,
) -> TokenStream {
    let shapeless = options.shapeless;
    let mut key = Vec::new();
    let mut push = Vec::new();
    let mut skeletons = Vec::new();
    let mut rebuilds = Vec::new();
    // The cache is a `static` inside the function, shared by every type a trait default
    // method or generic impl is instantiated for: the key names the instantiation.
    if has_self {
        key.push(
            quote! { __mlx_key.push_str(::std::any::type_name::<Self>()); __mlx_key.push(';'); },
        );
    } else {
        key.push(quote! {
            __mlx_key.push_str(::std::any::type_name_of_val(&__mlx_graph_body));
            __mlx_key.push(';');
        });
    }
    if has_self {
        key.push(quote! { ::mlx::Module::structure(self, &mut __mlx_key); __mlx_key.push(';'); });
        push.push(quote! { ::mlx::Module::visit(self, "", &mut |_, a| __mlx_inputs.push(a)); });
        skeletons.push(quote! { let __mlx_skel_self = ::mlx::graph::skeleton(self); });
        rebuilds.push(
            quote! { let __mlx_self = ::mlx::Module::rebuild(&__mlx_skel_self, &mut __mlx_it); },
        );
    }
    for p in params {
        let n = &p.name;
        let skel = format_ident!("__mlx_skel_{}", n);
        let span = p.ty.span();
        match p.kind {
            Kind::Static => {
                key.push(quote_spanned! {span=>
                    __mlx_key.push_str(&::std::format!("{:?};", &#n));
                });
                skeletons.push(quote! { let #skel = ::core::clone::Clone::clone(&#n); });
                rebuilds.push(quote! { let #n = ::core::clone::Clone::clone(&#skel); });
            }
            Kind::ModuleRef | Kind::ModuleValue => {
                let as_ref = match p.kind {
                    Kind::ModuleRef => quote! { #n },
                    _ => quote! { &#n },
                };
                key.push(quote_spanned! {span=>
                    ::mlx::Module::structure(#as_ref, &mut __mlx_key); __mlx_key.push(';');
                });
                push.push(quote_spanned! {span=>
                    ::mlx::Module::visit(#as_ref, "", &mut |_, a| __mlx_inputs.push(a));
                });
                skeletons.push(quote! { let #skel = ::mlx::graph::skeleton(#as_ref); });
                let bind = match p.kind {
                    Kind::ModuleRef => {
                        quote! { let #n = &::mlx::Module::rebuild(&#skel, &mut __mlx_it); }
                    }
                    _ => quote! { let #n = ::mlx::Module::rebuild(&#skel, &mut __mlx_it); },
                };
                rebuilds.push(bind);
            }
            Kind::Slice => {
                key.push(quote! { __mlx_key.push_str(&::std::format!("[{}];", #n.len())); });
                push.push(quote! { __mlx_inputs.extend(#n.iter()); });
                skeletons.push(quote! { let #skel = ::mlx::graph::skeleton(&#n.to_vec()); });
                rebuilds
                    .push(quote! { let #n = &::mlx::Module::rebuild(&#skel, &mut __mlx_it)[..]; });
            }
            Kind::OptionRef => {
                key.push(
                    quote! { __mlx_key.push_str(if #n.is_some() { "Some;" } else { "None;" }); },
                );
                push.push(quote! { __mlx_inputs.extend(#n); });
                skeletons.push(quote! { let #skel = ::mlx::graph::skeleton(&#n.cloned()); });
                let tmp = format_ident!("__mlx_opt_{}", n);
                rebuilds.push(quote! {
                    let #tmp = ::mlx::Module::rebuild(&#skel, &mut __mlx_it);
                    let #n = #tmp.as_ref();
                });
            }
        }
    }
    // Spanned at the return type, so that an unsupported one is reported there.
    let unflatten =
        quote_spanned! {output.span()=> ::mlx::graph::unflatten::<#output>(__mlx_result) };
    let flatten = quote_spanned! {output.span()=> ::mlx::graph::flatten::<#output>(__mlx_out) };
    quote! {
        if ::mlx::compile::is_eager() {
            return #eager_call;
        }
        static __MLX_GRAPH: ::mlx::graph::GraphCache = ::mlx::graph::GraphCache::new(#name);
        let mut __mlx_key = ::std::string::String::new();
        #(#key)*
        let mut __mlx_inputs: ::std::vec::Vec<&::mlx::Array> = ::std::vec::Vec::new();
        #(#push)*
        let __mlx_result = __MLX_GRAPH.call(__mlx_key, #shapeless, &__mlx_inputs, || {
            #(#skeletons)*
            ::std::boxed::Box::new(move |__mlx_arrays: &[::mlx::Array]| {
                let mut __mlx_it = __mlx_arrays.iter().cloned();
                #(#rebuilds)*
                let __mlx_out: #output = #traced_call;
                ::mlx::Result::Ok(#flatten)
            })
        });
        #unflatten
    }
}

fn output_type(sig: &Signature) -> Type {
    match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        // Rejected by `check_signature`.
        ReturnType::Default => syn::parse_quote!(()),
    }
}

/// A call passing each parameter by name.
fn arg_names(params: &[Param]) -> Vec<&syn::Ident> {
    params.iter().map(|p| &p.name).collect()
}

/// Expands `#[mlx::graph]` on a function (free, associated, or a `&self` method).
///
/// The original body becomes a closure that captures nothing (so that the compiled closure
/// can own it and it still sees `Self` and the impl's items); in a method, `self` becomes
/// the closure's first parameter. The function keeps its signature and runs the wrapper.
pub fn expand(attr: TokenStream, mut item: ItemFn) -> syn::Result<TokenStream> {
    let options = parse_options(attr)?;
    check_signature(&item.sig)?;
    check_body(&item.block)?;
    let (params, has_self) = params(&mut item.sig)?;
    let output = output_type(&item.sig);
    let names = arg_names(&params);
    let name = item.sig.ident.to_string();
    let typed = params.iter().map(|p| {
        let (n, ty) = (&p.name, &p.ty);
        let mutability = p.mutable.then(|| quote! { mut });
        quote! { #mutability #n: #ty }
    });
    let block = &item.block;
    let (this, body, eager_args, traced_args) = if has_self {
        let body = rewrite_self(quote! { #block });
        (
            quote! { __mlx_this: &Self, },
            body,
            quote! { self, },
            quote! { &__mlx_self, },
        )
    } else {
        (quote! {}, quote! { #block }, quote! {}, quote! {})
    };
    let closure = quote! {
        let __mlx_graph_body = |#this #(#typed),*| -> #output #body;
    };
    let eager = quote! { ::mlx::graph::eager(|| __mlx_graph_body(#eager_args #(#names),*)) };
    let traced = quote! { __mlx_graph_body(#traced_args #(#names),*) };
    let wrapper = wrapper(&name, &options, &params, has_self, eager, traced, &output);
    let attrs = &item.attrs;
    let vis = &item.vis;
    let sig = &item.sig;
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #closure
            #wrapper
        }
    })
}

/// `self` in a method body, as the body closure's `__mlx_this` parameter; `self::` paths
/// (the current module) are left alone.
fn rewrite_self(tokens: TokenStream) -> TokenStream {
    use proc_macro2::{Group, Ident, TokenTree};
    let mut out = Vec::new();
    let mut iter = tokens.into_iter().peekable();
    while let Some(tree) = iter.next() {
        match tree {
            TokenTree::Ident(ident) if ident == "self" => {
                let path = matches!(iter.peek(), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                if path {
                    out.push(TokenTree::Ident(ident));
                } else {
                    out.push(TokenTree::Ident(Ident::new("__mlx_this", ident.span())));
                }
            }
            TokenTree::Group(group) => {
                let mut new = Group::new(group.delimiter(), rewrite_self(group.stream()));
                new.set_span(group.span());
                out.push(TokenTree::Group(new));
            }
            other => out.push(other),
        }
    }
    out.into_iter().collect()
}

/// The item as written, minus `#[mlx(...)]` parameter attributes (which only mean something
/// to this macro), for emitting next to an error.
pub fn strip_graph_attrs(item: TokenStream) -> TokenStream {
    match syn::parse2::<ItemFn>(item.clone()) {
        Ok(mut f) => {
            for input in f.sig.inputs.iter_mut() {
                if let FnArg::Typed(p) = input {
                    p.attrs.retain(|a| !a.path().is_ident("mlx"));
                }
            }
            quote! { #f }
        }
        Err(_) => item,
    }
}

/// `#[mlx::graph]` on anything else.
pub fn misplaced(span: Span) -> syn::Error {
    syn::Error::new(span, "#[mlx::graph] goes on a function or a `&self` method")
}

#[cfg(test)]
mod tests {
    //! The expansion of representative graphs, pretty-printed, as snapshots in
    //! `tests/snapshots/`: every change to the generated code shows in review.

    use super::*;

    /// Expands `item` (inside `impl Model { ... }` when `in_impl`) and pretty-prints it.
    fn expansion(attr: &str, item: &str, in_impl: bool) -> String {
        let parsed: ItemFn = syn::parse_str(item).expect("test item parses");
        let tokens = expand(attr.parse().expect("test options parse"), parsed).expect("expands");
        let tokens = if in_impl {
            quote! { impl Model { #tokens } }
        } else {
            tokens
        };
        let file: syn::File = syn::parse2(tokens).expect("the expansion parses as a file");
        prettyplease::unparse(&file)
    }

    fn snapshot(name: &str, text: String) {
        insta::with_settings!({
            snapshot_path => "../../tests/snapshots",
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!(name, text);
        });
    }

    #[test]
    fn expands_a_free_function() {
        snapshot(
            "expand_free_function",
            expansion(
                "",
                "fn gelu_chain(x: &Array, y: &Array) -> Array { (x * 1.5 + y).gelu() }",
                false,
            ),
        );
    }

    #[test]
    fn expands_statics_and_borrowed_forms() {
        snapshot(
            "expand_statics_and_borrowed_forms",
            expansion(
                "",
                "pub fn mix(xs: &[Array], mask: Option<&Array>, scale: f32, #[mlx(static)] act: Act) -> (Array, Array) { (&xs[0] * scale, mask.cloned().unwrap_or_else(|| act.apply(&xs[0]))) }",
                false,
            ),
        );
    }

    #[test]
    fn expands_a_method() {
        snapshot(
            "expand_method",
            expansion(
                "",
                "pub fn forward(&self, x: &Array) -> Array { x.matmul(&self.weight.t()) }",
                true,
            ),
        );
    }

    #[test]
    fn expands_a_shapeless_method_with_a_vec_output() {
        snapshot(
            "expand_shapeless_method",
            expansion(
                "shapeless",
                "fn heads(&self, x: &Array, n: usize) -> Vec<Array> { x.split(n as i32, -1) }",
                true,
            ),
        );
    }

    #[test]
    fn expands_an_associated_function_using_self_type() {
        snapshot(
            "expand_associated_function",
            expansion(
                "",
                "fn both(a: &Array, b: (Array, Array)) -> Array { Self::helper(a, &b.0) }",
                true,
            ),
        );
    }
}
