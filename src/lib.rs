//! The `mlx` crate: what users depend on. It fronts the workspace: the runtime
//! ([`Array`], ops, evaluation, step loops, compiled functions, IO), the macros
//! (`#[mlx::graph]`, `#[derive(Module)]`, `#[derive(GraphOutput)]`) and the layers
//! models share ([`nn`]).
//!
//! The README follows; its examples run as doctests.
#![doc = include_str!("../README.md")]

// The macros name this crate `::mlx`; this lets `nn`, written with them, do the same.
extern crate self as mlx;

pub mod nn;

pub use mlx_macros::{graph, GraphOutput, Module};
pub use mlx_runtime::*;
