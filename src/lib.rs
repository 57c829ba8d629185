//! Write MLX models in plain Rust.
//!
//! This crate is what users depend on. It fronts the workspace: today the runtime
//! ([`Array`], ops, evaluation, memory, IO); the macros crate joins it here.

pub use mlx_runtime::*;
