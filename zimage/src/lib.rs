//! The Z-Image text-to-image pipeline, as diffusers' `ZImagePipeline` computes it: the
//! prompt through Qwen3's chat template and text encoder, flow-match Euler sampling with
//! the Z-Image transformer, and the VAE's decoder to a picture. Every model is written with
//! `#[derive(mlx::Module)]` and `#[mlx::graph]` in its own crate (`qwen3`, `dit`, `vae`);
//! this crate puts them together and owns the `dit` command.
//!
//! - [`folder`]: what a model directory holds (a diffusers pipeline folder or a lone
//!   transformer checkpoint), read from `model_index.json`.
//! - [`pipeline`]: the loaded components, built-in pipelines, writing pipeline folders.
//! - [`prompt`]: prompt to embeddings (`ZImagePipeline._encode_prompt`).
//! - [`scheduler`], [`sampler`]: the denoising loop, guidance, TeaCache.
//! - [`edit`]: image to image and inpainting inputs (pictures, masks, VAE encoding).
//! - [`picture`]: decoded images to 8-bit RGB and PNG files with their parameters;
//!   [`preview`]: a PNG of latents, for transformer-only checkpoints.
//! - [`api`]: the request body of `dit serve`'s images API.
//! - [`resample`]: Pillow's Lanczos resize, bit for bit (diffusers' preprocessing).

pub mod api;
pub mod edit;
pub mod folder;
pub mod picture;
pub mod pipeline;
pub mod preview;
pub mod prompt;
pub mod resample;
pub mod sampler;
pub mod scheduler;

pub use pipeline::Pipeline;

use std::path::{Path, PathBuf};

/// What can go wrong in the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
    /// The caller stopped the run (see [`sampler::generate_until`]).
    #[error("cancelled")]
    Cancelled,
    /// NaN or infinities where a picture was to come from (`what`: the latents after the
    /// last step, the decoded image): weights holding them, or activations past the range
    /// of the compute dtype.
    #[error(
        "NaN or infinite values in {what} ({dtype}): the weights hold some, or the \
         activations overflowed {dtype} (float16's range is the narrow one: bf16 and f32 have \
         float32's)"
    )]
    NonFinite { what: String, dtype: mlx::Dtype },
    #[error("encoding a PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error(transparent)]
    Transformer(#[from] dit::DitError),
    #[error(transparent)]
    TextEncoder(#[from] qwen3::Qwen3Error),
    #[error(transparent)]
    Vae(#[from] vae::VaeError),
    #[error(transparent)]
    Mlx(#[from] mlx::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A text file's contents, an I/O error naming the file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
