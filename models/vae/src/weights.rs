//! Where the weights come from: a diffusers-layout directory (`config.json` and one or
//! many `*.safetensors`, sharded ones with `*.safetensors.index.json`) or seeded random
//! weights; and writing a model back in that layout.

use std::path::Path;

use mlx::io::{load_checkpoint, save_checkpoint, Checkpoint};
use mlx::module::LoadReport;
use mlx::{random, Dtype, Module};

use crate::config::VaeConfig;
use crate::model::{AutoencoderKL, Parts};
use crate::{Result, VaeError};

/// The file diffusers writes an unsharded model to.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The seed of the built-in models' weights.
pub const BUILTIN_SEED: u64 = 0x7ae;

impl AutoencoderKL {
    /// Loads `dir`'s `config.json` and weights, converted to `dtype` (evaluated: a
    /// checkpoint already in `dtype` stays memory-mapped). With [`Parts::Decoder`] the
    /// encoder's tensors are never read.
    pub fn load(dir: impl AsRef<Path>, dtype: Dtype, parts: Parts) -> Result<AutoencoderKL> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(VaeError::Input(format!(
                "{}: not a model directory",
                dir.display()
            )));
        }
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        let checkpoint = load_checkpoint(dir)?;
        AutoencoderKL::from_checkpoint(&config, checkpoint, dtype, parts, dir)
    }

    /// A model of `config` from the tensors of `checkpoint` (read from `source`, which
    /// errors name). Reports every problem at once.
    pub fn from_checkpoint(
        config: &VaeConfig,
        mut checkpoint: Checkpoint,
        dtype: Dtype,
        parts: Parts,
        source: &Path,
    ) -> Result<AutoencoderKL> {
        if parts == Parts::Decoder {
            let encoder_only: Vec<String> = checkpoint
                .names()
                .filter(|name| name.starts_with("encoder.") || name.starts_with("quant_conv."))
                .map(str::to_owned)
                .collect();
            for name in encoder_only {
                checkpoint.take(&name);
            }
        }
        let wrongly_stored = checkpoint
            .iter()
            .filter(|(_, array)| !array.dtype().is_float())
            .map(|(name, array)| (name.to_owned(), format!("stored as {}", array.dtype())))
            .collect();
        let mut model = AutoencoderKL::zeros(config, dtype, parts);
        let mut report = LoadReport {
            wrongly_stored,
            ..LoadReport::default()
        };
        model.load_from("", &mut checkpoint, &mut report);
        report.unexpected = checkpoint.names().map(str::to_owned).collect();
        if !report.is_clean() {
            return Err(VaeError::Checkpoint {
                path: source.to_path_buf(),
                report: Box::new(report),
            });
        }
        mlx::eval(model.parameters().into_iter().map(|(_, a)| a))?;
        Ok(model)
    }

    /// A model of `config` with [`random_weights`] from `seed`, in `dtype`.
    pub fn random(config: &VaeConfig, seed: u64, dtype: Dtype) -> Result<AutoencoderKL> {
        let checkpoint = random_weights(config, seed);
        AutoencoderKL::from_checkpoint(
            config,
            checkpoint,
            dtype,
            Parts::Both,
            Path::new("<random>"),
        )
    }

    /// Writes the model as a diffusers-layout checkpoint: `config.json` and one
    /// safetensors file, tensors in `dtype`. A model loaded without its encoder is written
    /// without it. Refuses a directory that already holds a checkpoint: files left from
    /// it (a shard index above all) would shadow or mix with the new one.
    pub fn save(&self, dir: &Path, dtype: Dtype) -> Result<()> {
        if mlx::io::holds_checkpoint(dir) {
            return Err(VaeError::Input(format!(
                "{}: already holds a checkpoint; choose a new directory",
                dir.display()
            )));
        }
        // A `Value` always serializes.
        let config = serde_json::to_string_pretty(&self.config.to_json()).unwrap_or_default();
        save_checkpoint(dir, WEIGHTS_FILE, self.parameters(), dtype, &config)?;
        Ok(())
    }
}

/// Deterministic random weights of `config`'s shapes (both halves), scaled so activations
/// stay O(1): convolution and linear weights `N(0, 1/fan_in)`, biases `N(0, 0.02²)`, norm
/// weights `1 + N(0, 0.1²)`.
pub fn random_weights(config: &VaeConfig, seed: u64) -> Checkpoint {
    let shapes = AutoencoderKL::zeros(config, Dtype::F32, Parts::Both);
    let params = shapes.parameters();
    let keys = random::split(&random::key(seed), params.len() as i32);
    let arrays = params.into_iter().zip(keys).map(|((name, like), key)| {
        let noise = random::normal(like.shape(), Dtype::F32, &key);
        let value = if name.ends_with(".bias") {
            noise * 0.02
        } else if like.ndim() == 1 {
            noise * 0.1 + 1.0
        } else {
            // [out, in, kh, kw] or [out, in]: fan_in is everything but the first axis.
            let fan_in = like.size() / like.dim(0).unwrap_or(1).max(1) as usize;
            noise * (1.0 / (fan_in as f64).sqrt())
        };
        (name, value)
    });
    Checkpoint::from_arrays(arrays)
}
