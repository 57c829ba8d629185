//! diffusers' `AutoencoderKL` written with `#[mlx::graph]` and `#[derive(mlx::Module)]`:
//! the same `config.json`, weight names and numerics, the encoder and decoder, and
//! diffusers' tiling.
//!
//! - [`config`]: `config.json` and the built-in sizes.
//! - [`conv`]: convolutions in the formulations fast on MLX's CPU backend.
//! - [`layers`]: ResNet block, mid-block attention, up- and downsampling.
//! - [`encoder`], [`decoder`]: the two halves.
//! - [`gaussian`]: the encoder's posterior.
//! - [`tiling`]: tile grids and the blending of overlapping tiles.
//! - [`model`]: [`AutoencoderKL`], its public API (NCHW in and out).
//! - [`weights`]: loading and writing checkpoints, seeded random weights.
//!
//! Arrays are channels-last (NHWC) inside, as MLX's convolutions want them; the public
//! API takes and returns NCHW, as diffusers does.
//!
//! ```
//! use mlx::{random, Dtype};
//! use vae::{AutoencoderKL, Tiling, VaeConfig};
//!
//! // `AutoencoderKL::load(dir, Dtype::F32, Parts::Decoder)` reads a diffusers checkpoint.
//! let vae = AutoencoderKL::random(&VaeConfig::tiny(), 0, Dtype::F32)?;
//! let latents = random::normal(&[1, 16, 8, 8], Dtype::F32, &random::key(0));
//! let image = vae.decode_latents_with(&latents, Tiling::Auto)?;
//! assert_eq!(image.shape(), &[1, 3, 64, 64]);
//! let posterior = vae.encode(&image.clip(-1.0, 1.0))?;
//! assert_eq!(posterior.mode().shape(), &[1, 16, 8, 8]);
//! # Ok::<(), vae::VaeError>(())
//! ```

pub mod config;
pub mod conv;
pub mod decoder;
pub mod encoder;
pub mod gaussian;
pub mod layers;
pub mod model;
pub mod tiling;
pub mod weights;

pub use config::VaeConfig;
pub use gaussian::DiagonalGaussian;
pub use model::{AutoencoderKL, Parts};
pub use tiling::Tiling;

use std::path::PathBuf;

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// An input the model cannot take (a tensor of the wrong shape, a missing part).
    #[error("{0}")]
    Input(String),
    /// A checkpoint does not fit the model: every problem at once.
    #[error("{}: {report}", path.display())]
    Checkpoint {
        path: PathBuf,
        report: Box<mlx::module::LoadReport>,
    },
    #[error(transparent)]
    Mlx(#[from] mlx::Error),
}

pub type Result<T> = std::result::Result<T, VaeError>;
