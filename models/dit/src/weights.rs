//! Where a model's weights come from: a diffusers-layout directory (`config.json` and one
//! or many `*.safetensors`, sharded ones with `*.safetensors.index.json`) or a built-in
//! model with deterministic random weights; and writing a model back in that layout.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mlx::io::{load_checkpoint, save_safetensors, Checkpoint};
use mlx::{random, Array, Dtype, Module};

use crate::config::{DitConfig, T_FREQ_DIM};
use crate::model::ZImage;
use crate::teacache::{Coefficients, COEFFICIENTS_FILE};
use crate::{DitError, Result};

/// The file diffusers writes an unsharded transformer to.
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// Seed of the built-in models' weights.
const BUILTIN_SEED: u64 = 0x5a1;

/// A `--model` argument: `tiny`, `small`, or a checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    Builtin(Builtin),
    Dir(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Tiny,
    Small,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Tiny => "tiny",
            Builtin::Small => "small",
        }
    }

    pub fn config(self) -> DitConfig {
        match self {
            Builtin::Tiny => DitConfig::tiny(),
            Builtin::Small => DitConfig::small(),
        }
    }
}

impl ModelSource {
    /// `tiny` and `small` name the built-in models; anything else is a directory.
    pub fn parse(arg: &str) -> ModelSource {
        match arg {
            "tiny" => ModelSource::Builtin(Builtin::Tiny),
            "small" => ModelSource::Builtin(Builtin::Small),
            dir => ModelSource::Dir(PathBuf::from(dir)),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Builtin(b) => f.write_str(b.name()),
            ModelSource::Dir(dir) => write!(f, "{}", dir.display()),
        }
    }
}

/// TeaCache's fitted polynomial for a model: the built-in models ship theirs; a
/// directory may carry one in `teacache_coefficients.json`.
pub fn teacache_coefficients(source: &ModelSource) -> Result<Option<Coefficients>> {
    match source {
        ModelSource::Builtin(builtin) => {
            let text = match builtin {
                Builtin::Tiny => include_str!("../coefficients/tiny.json"),
                Builtin::Small => include_str!("../coefficients/small.json"),
            };
            // The files are committed and tested: they parse.
            Ok(Coefficients::parse(text).ok())
        }
        ModelSource::Dir(dir) => {
            let path = dir.join(COEFFICIENTS_FILE);
            path.is_file()
                .then(|| Coefficients::read(&path))
                .transpose()
        }
    }
}

/// A loaded model and what its checkpoint held.
pub struct Loaded {
    pub model: ZImage,
    /// Tensors per stored dtype.
    pub stored_dtypes: BTreeMap<String, usize>,
    /// Bytes of the stored tensors.
    pub stored_bytes: usize,
}

/// Loads a model to compute in `dtype`, its weights evaluated (a checkpoint in `dtype`
/// stays memory-mapped, others are converted once).
pub fn load(source: &ModelSource, dtype: Dtype) -> Result<Loaded> {
    let (config, checkpoint) = match source {
        ModelSource::Builtin(builtin) => {
            let config = builtin.config();
            let checkpoint = random_weights(&config);
            (config, checkpoint)
        }
        ModelSource::Dir(dir) => read_dir(dir)?,
    };
    let mut stored_dtypes = BTreeMap::new();
    let mut stored_bytes = 0;
    for (_, array) in checkpoint.iter() {
        *stored_dtypes.entry(array.dtype().to_string()).or_insert(0) += 1;
        stored_bytes += array.nbytes();
    }
    let mut model = ZImage::zeros(&config, dtype);
    model.load(checkpoint)?;
    mlx::eval(model.parameters().into_iter().map(|(_, a)| a))?;
    Ok(Loaded {
        model,
        stored_dtypes,
        stored_bytes,
    })
}

/// Reads `config.json` and the safetensors of a checkpoint directory.
fn read_dir(dir: &Path) -> Result<(DitConfig, Checkpoint)> {
    if !dir.is_dir() {
        return Err(DitError::Input(format!(
            "{}: not a model directory (nor one of the built-in models tiny, small)",
            dir.display()
        )));
    }
    let config = DitConfig::from_file(&dir.join("config.json"))?;
    let checkpoint = load_checkpoint(dir)?;
    Ok((config, checkpoint))
}

/// Writes `model` as a diffusers-layout checkpoint: `config.json` and one safetensors
/// file, tensors in `dtype`.
pub fn save(model: &ZImage, dir: &Path, dtype: Dtype) -> Result<()> {
    let io = |e| DitError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tensors: Vec<(String, Array)> = model
        .parameters()
        .into_iter()
        .map(|(name, array)| (name, array.astype(dtype)))
        .collect();
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(
        dir.join(WEIGHTS_FILE),
        tensors.iter().map(|(name, array)| (name, array)),
        &metadata,
    )?;
    let config = serde_json::to_string_pretty(&model.config.to_json()).unwrap_or_default();
    let path = dir.join("config.json");
    std::fs::write(&path, config + "\n").map_err(|e| DitError::Io { path, source: e })
}

/// Deterministic random weights of `config`'s shapes, scaled so activations stay O(1):
/// linear weights `N(0, 1/fan_in)`, biases `N(0, 0.02²)`, norm weights `1 + N(0, 0.1²)`,
/// pad tokens `N(0, 1)`.
pub fn random_weights(config: &DitConfig) -> Checkpoint {
    let shapes = ZImage::zeros(config, Dtype::F32);
    let root = random::key(BUILTIN_SEED);
    let params = shapes.parameters();
    let keys = random::split(&root, params.len() as i32);
    let arrays = params.into_iter().zip(keys).map(|((name, like), key)| {
        let noise = random::normal(like.shape(), Dtype::F32, &key);
        let value = if name.ends_with("pad_token") {
            noise
        } else if name.ends_with(".bias") {
            noise * 0.02
        } else if like.ndim() == 1 {
            noise * 0.1 + 1.0
        } else {
            let fan_in = like.dim(1).unwrap_or(1);
            noise * (1.0 / f64::from(fan_in).sqrt())
        };
        let value = if name == "t_embedder.mlp.0.weight" {
            value * smooth_timestep_response()
        } else {
            value
        };
        (name, value)
    });
    Checkpoint::from_arrays(arrays)
}

/// Per-feature weights `[1, 256]` for the timestep MLP's input: sinusoidal features whose
/// frequency would turn more than a few radians over the timestep range (`t·1000` spans
/// 0..1000) are damped in proportion. Uniform random weights would make the model's
/// modulation, and so its output, jump between neighbouring steps, which no trained
/// diffusion model does and which would make every caching decision meaningless.
fn smooth_timestep_response() -> Array {
    /// The highest frequency kept at full weight: 3 radians over the range.
    const MAX_FREQ: f32 = 3.0 / 1000.0;
    let half = T_FREQ_DIM / 2;
    let damping: Vec<f32> = (0..T_FREQ_DIM)
        .map(|i| {
            let k = i % half;
            let freq = (-(10000f32.ln()) * k as f32 / half as f32).exp();
            (MAX_FREQ / freq).min(1.0)
        })
        .collect();
    Array::from_slice(&damping, &[1, T_FREQ_DIM])
}
