//! Qwen3 written with `#[mlx::graph]` and `#[derive(mlx::Module)]`: transformers'
//! `Qwen3Model` (same `config.json`, weight names and numerics), its tokenizer and chat
//! template. Z-Image uses it as its text encoder: the prompt, templated and tokenized as
//! diffusers' `ZImagePipeline` does ([`Tokenizer::prompt_ids`]), through the first
//! [`Qwen3Model::encoder_depth`] layers ([`Qwen3Model::hidden_states`]).
//!
//! - [`config`]: `config.json` and the built-in model sizes.
//! - [`model`]: the decoder layers and the model.
//! - [`weights`]: loading and writing checkpoints, built-in random weights.
//! - [`tokenizer`]: `tokenizer.json` through the `tokenizers` crate, and the prompt ids
//!   of the pipeline; [`chat_template`]: rendering chat templates as transformers does.
//! - [`causal_lm`]: `Qwen3ForCausalLM` with KV caches; [`generate`]: prefill and the
//!   decoding loop; [`sample`]: greedy, temperature, top-k and top-p; [`stream`]: text out
//!   as tokens arrive. The `qwen3 generate` command runs them.
//!
//! A prompt's caption features, as `ZImagePipeline._encode_prompt` computes them (here
//! with the built-in tokenizer and tiny model; `Tokenizer::from_dir` and `weights::load`
//! read a Z-Image folder's `tokenizer/` and `text_encoder/`):
//!
//! ```
//! use qwen3::tokenizer::MAX_SEQUENCE_LENGTH;
//! use qwen3::{weights, LoadOptions, Qwen3Config, Tokenizer};
//!
//! # fn main() -> qwen3::Result<()> {
//! let tokenizer = Tokenizer::builtin()?;
//! let encoder = weights::builtin(&Qwen3Config::tiny(), LoadOptions::text_encoder(mlx::Dtype::F32))?;
//! let prompt = tokenizer.prompt_ids("a red fox in the snow", MAX_SEQUENCE_LENGTH)?;
//! let ids = mlx::Array::from_slice(&prompt.ids, &[1, prompt.ids.len() as i32]);
//! let features = encoder.hidden_states(&ids, encoder.encoder_depth())?; // [1, L, 64]
//! assert_eq!(features.shape(), [1, prompt.ids.len() as i32, 64]);
//! # Ok(())
//! # }
//! ```

pub mod causal_lm;
pub mod chat_template;
pub mod config;
pub mod generate;
pub mod model;
pub mod sample;
pub mod stream;
pub mod tokenizer;
pub mod weights;

pub use causal_lm::{Cache, Qwen3ForCausalLM};
pub use chat_template::Message;
pub use config::Qwen3Config;
pub use generate::{GenerateOptions, Generation, GenerationConfig};
pub use model::{KvCache, Qwen3Model};
pub use sample::Sampling;
pub use stream::StreamDecoder;
pub use tokenizer::{PromptIds, Tokenizer};
pub use weights::{Layers, LoadOptions};

use std::path::PathBuf;

/// What can go wrong in this crate. Every variant about a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Qwen3Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `config.json` that does not parse or describes a model this crate cannot run.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A `tokenizer.json` or `tokenizer_config.json` that does not parse.
    #[error("{path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    /// A chat template that does not compile or fails to render (`path` is the file it
    /// came from).
    #[error("{path}: chat template: {message}")]
    Template { path: PathBuf, message: String },
    /// A checkpoint (`path`, its directory) that does not fit the model: every problem at
    /// once.
    #[error("{path}: {report}")]
    Checkpoint {
        path: PathBuf,
        report: Box<mlx::module::LoadReport>,
    },
    /// A checkpoint (`path`, its directory) whose quantization cannot be loaded as asked.
    #[error("{path}: {source}")]
    Quantization {
        path: PathBuf,
        source: mlx::nn::quantize::QuantizedCheckpointError,
    },
    /// Arguments the model or tokenizer cannot take.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Mlx(#[from] mlx::Error),
}

pub type Result<T> = std::result::Result<T, Qwen3Error>;

/// A text file's contents, an I/O error naming the file.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Qwen3Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// A message on one line: errors of the libraries this crate wraps (JSON, tokenizers,
/// templates) may span several, and an error names its file on the one line it has.
pub(crate) fn one_line(message: impl std::fmt::Display) -> String {
    message
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    /// The pipeline shares one tokenizer and one model between threads (`dit serve`).
    #[test]
    fn models_and_tokenizers_are_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<crate::Tokenizer>();
        shared::<crate::Qwen3Model>();
        shared::<crate::Qwen3ForCausalLM>();
        shared::<crate::Qwen3Error>();
    }
}
