//! `mlx::nn`: the layers models share, as MLX has `mlx.nn` and candle has `candle-nn`.
//!
//! Each layer is a `#[derive(Module)]` struct whose field paths are PyTorch's weight
//! names (`weight`, `bias`), so a model built from them loads diffusers and transformers
//! checkpoints by name. Layers take channels-last activations, as MLX's kernels do.
//!
//! - [`Linear`] (dense or quantized, formats in [`quant`], whole models in [`quantize`];
//!   LoRA adapters in [`lora`]),
//!   [`Embedding`];
//! - [`RmsNorm`], [`LayerNorm`], [`GroupNorm`];
//! - [`Conv2d`];
//! - [`rope`]: rotary position embeddings; [`attention`]: head layout and key masks.
//!
//! They live in the `mlx` package itself, beside the runtime and the macros they are
//! written with, so that every model crate depends on one package and no model crate on
//! another.

pub mod attention;
mod conv;
mod embedding;
mod linear;
pub mod lora;
mod norm;
pub mod quant;
pub mod quantize;
pub mod rope;

pub use conv::Conv2d;
pub use embedding::Embedding;
pub use linear::{Dense, Linear, QuantizedLinear};
pub use norm::{GroupNorm, LayerNorm, RmsNorm};
pub use quant::{MatmulPath, ProbeShape, QuantConfig, QuantFormat, QuantizedWeight};
pub use quantize::QuantReport;
