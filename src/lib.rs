//! The `mlx` crate: what users depend on. It fronts the workspace: the runtime
//! ([`Array`], ops, evaluation, step loops, compiled functions, IO) and the macros
//! (`#[mlx::graph]`, `#[derive(Module)]`, `#[derive(GraphOutput)]`).
//!
//! The README follows; its examples run as doctests.
#![doc = include_str!("../README.md")]

pub use mlx_macros::{graph, GraphOutput, Module};
pub use mlx_runtime::*;
