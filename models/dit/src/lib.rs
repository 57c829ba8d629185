//! The Z-Image diffusion transformer written with `#[mlx::graph]` and `#[derive(mlx::Module)]`:
//! diffusers' `ZImageTransformer2DModel` (same `config.json`, weight names and numerics),
//! checkpoint loading, and TeaCache. The sampler and the `dit` command are the `zimage`
//! crate's.
//!
//! - [`config`]: `config.json` and the built-in model sizes.
//! - [`layers`]: attention, feed-forward, transformer block, embedders, final layer (over
//!   `mlx::nn`'s linear layers, dense or quantized).
//! - [`sequence`]: patchify, pad tokens, RoPE positions and attention masks.
//! - [`model`]: the transformer.
//! - [`weights`]: loading and writing checkpoints, built-in random weights; [`lora`]:
//!   LoRA adapter files (diffusers/PEFT and Kohya layouts) applied to the linear layers.
//! - [`teacache`]: step skipping; [`denoiser`]: one step's transformer work under it.

pub mod config;
pub mod denoiser;
pub mod layers;
pub mod lora;
pub mod model;
pub mod sequence;
pub mod teacache;
pub mod weights;

pub use config::DitConfig;
pub use model::ZImage;

use std::path::PathBuf;

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum DitError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    /// A checkpoint (`model`: its directory or built-in name) does not fit the model:
    /// every problem at once.
    #[error("{model}: {report}")]
    Checkpoint {
        model: String,
        report: Box<mlx::module::LoadReport>,
    },
    /// A checkpoint (`model`: its directory or built-in name) whose quantization cannot be
    /// loaded as asked.
    #[error("{model}: {source}")]
    Quantization {
        model: String,
        source: mlx::nn::quantize::QuantizedCheckpointError,
    },
    /// A LoRA adapter file (`path`) that cannot be read or does not fit the model.
    #[error("{path}: {message}")]
    Adapter { path: PathBuf, message: String },
    #[error(transparent)]
    Mlx(#[from] mlx::Error),
}

pub type Result<T> = std::result::Result<T, DitError>;

/// A text file's contents, an I/O error naming the file.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| DitError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
