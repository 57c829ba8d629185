//! Where a model's weights come from: a diffusers-layout directory (`config.json` and one
//! or many `*.safetensors`, sharded ones with `*.safetensors.index.json`) or a built-in
//! model with deterministic random weights; and writing a model back in that layout. Linear
//! layers may be stored quantized (by `dit quantize`, or in MLX's own layout: see
//! [`mlx::nn::quantize::from_mlx_names`]) or quantized at load.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mlx::io::{load_checkpoint, save_checkpoint, Checkpoint};
use mlx::module::LoadReport;
use mlx::{random, Array, Dtype, Module};

use crate::config::{DitConfig, T_FREQ_DIM};
use crate::layers::timestep_frequencies;
use crate::model::ZImage;
use crate::teacache::{Coefficients, COEFFICIENTS_FILE};
use crate::{DitError, Result};
use mlx::nn::quant::{MatmulPath, ProbeShape, QuantConfig};
use mlx::nn::quantize::{self, quantized_templates, LoadQuantization};
use mlx::nn::Linear;
pub use mlx::nn::QuantReport;

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

/// How to load a model. A `Dtype` converts into the options that load the checkpoint as it
/// is stored (dense, or quantized by `dit quantize`), computing in that dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The dtype the model computes in.
    pub dtype: Dtype,
    /// Quantize a dense checkpoint's linear layers in memory.
    pub quantize: Option<QuantConfig>,
    /// The matmul of quantized layers; `None` probes the device once (see
    /// [`mlx::nn::quant::probe`]). Tests force one path or the other.
    pub matmul: Option<MatmulPath>,
}

impl From<Dtype> for LoadOptions {
    fn from(dtype: Dtype) -> LoadOptions {
        LoadOptions {
            dtype,
            quantize: None,
            matmul: None,
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
    /// How the linear layers are stored in memory.
    pub quantization: QuantReport,
}

/// Loads a model, its weights evaluated (a checkpoint in the compute dtype stays
/// memory-mapped, others are converted once). A quantized checkpoint is recognized by
/// its `config.json`; `options.quantize` quantizes a dense one in memory.
pub fn load(source: &ModelSource, options: impl Into<LoadOptions>) -> Result<Loaded> {
    let options = options.into();
    let (config, checkpoint) = match source {
        ModelSource::Builtin(builtin) => {
            let config = builtin.config();
            let checkpoint = random_weights(&config);
            (config, checkpoint)
        }
        ModelSource::Dir(dir) => read_dir(dir)?,
    };
    let checkpoint = quantize::from_mlx_names(checkpoint);
    let mut stored_dtypes = BTreeMap::new();
    let mut stored_bytes = 0;
    for (_, array) in checkpoint.iter() {
        *stored_dtypes.entry(array.dtype().to_string()).or_insert(0) += 1;
        stored_bytes += array.nbytes();
    }
    let LoadQuantization { stored, matmul } = LoadQuantization::new(
        config.quantization,
        &checkpoint,
        options.quantize,
        options.matmul,
        options.dtype,
        probe_shape(&config),
    )
    .map_err(|error| DitError::Quantization {
        model: source.to_string(),
        source: error,
    })?;
    let mut model = ZImage::zeros(&config, options.dtype);
    let filled = match (stored, matmul) {
        (Some(stored), Some(matmul)) => fill_quantized(&mut model, checkpoint, stored, matmul),
        _ => fill(&mut model, checkpoint, Vec::new()),
    };
    filled.map_err(|report| DitError::Checkpoint {
        model: source.to_string(),
        report: Box::new(report),
    })?;
    if let (Some(asked), Some(matmul)) = (options.quantize, matmul) {
        let keeps_dense = |path: &str, linear: &Linear| ZImage::keeps_dense(path, linear, &asked);
        quantize::quantize_linears(model.linears_mut(), asked, matmul, keeps_dense)?;
        model.config.quantization = Some(asked);
    }
    mlx::eval(model.parameters().into_iter().map(|(_, a)| a))?;
    let quantization = report(&mut model, matmul);
    Ok(Loaded {
        model,
        stored_dtypes,
        stored_bytes,
        quantization,
    })
}

/// The product the matmul probe times: the feed-forward's up projection (the model's
/// largest layer) over the image tokens of a 1024x1024 picture, Z-Image's size.
pub fn probe_shape(config: &DitConfig) -> ProbeShape {
    // 1024 pixels are 128 latents (the VAE's 8x), then patches of `patch_size`.
    let tokens = (128 / config.patch_size()).pow(2);
    ProbeShape {
        tokens,
        out: config.ffn_hidden(),
        inp: config.dim,
    }
}

/// Loads every array of `model` from `checkpoint`; reports every missing, unexpected and
/// mis-shaped tensor at once, with the `other` problems found beforehand.
fn fill(
    model: &mut ZImage,
    mut checkpoint: Checkpoint,
    other: Vec<(String, String)>,
) -> std::result::Result<(), LoadReport> {
    let mut report = LoadReport {
        wrongly_stored: other,
        ..LoadReport::default()
    };
    model.load_from("", &mut checkpoint, &mut report);
    report.unexpected = checkpoint.names().map(str::to_owned).collect();
    if report.is_clean() {
        Ok(())
    } else {
        Err(report)
    }
}

/// What a loaded model's linear layers are.
fn report(model: &mut ZImage, matmul: Option<MatmulPath>) -> QuantReport {
    let (bytes, parameters) = (model.nbytes(), model.num_parameters());
    let config = model.config.quantization;
    let keeps_dense = |path: &str, linear: &Linear| {
        config.and_then(|config| ZImage::keeps_dense(path, linear, &config))
    };
    QuantReport::of(
        bytes,
        parameters,
        model.linears_mut(),
        config,
        matmul,
        keeps_dense,
    )
}

/// [`fill`]s `model` from a quantized checkpoint, its dense layers first made quantized
/// wherever `checkpoint` holds `<layer>.weight_scale` (see
/// [`quantize::quantized_templates`]).
fn fill_quantized(
    model: &mut ZImage,
    checkpoint: Checkpoint,
    stored: QuantConfig,
    matmul: MatmulPath,
) -> std::result::Result<(), LoadReport> {
    let dtype = model.dtype();
    let problems = quantized_templates(model.linears_mut(), &checkpoint, stored, matmul, dtype);
    fill(model, checkpoint, problems)
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

/// Refuses to write a checkpoint into a directory that already holds one (see
/// [`mlx::io::holds_checkpoint`]).
pub fn check_new_target(dir: &Path) -> Result<()> {
    if mlx::io::holds_checkpoint(dir) {
        return Err(DitError::Input(format!(
            "{}: already holds a checkpoint; choose a new directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `model` as a diffusers-layout checkpoint: `config.json` and one safetensors
/// file, float tensors in `dtype`. A quantized layer's packed weight and byte scales keep
/// their integer dtypes.
pub fn save(model: &ZImage, dir: &Path, dtype: Dtype) -> Result<()> {
    // A `Value` always serializes.
    let config = serde_json::to_string_pretty(&model.config.to_json()).unwrap_or_default();
    save_checkpoint(dir, WEIGHTS_FILE, model.parameters(), dtype, &config)?;
    Ok(())
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
    let per_frequency: Vec<f32> = timestep_frequencies()
        .iter()
        .map(|freq| (MAX_FREQ / freq).min(1.0))
        .collect();
    // The features are the cosines then the sines of the same frequencies.
    let damping = [per_frequency.as_slice(), per_frequency.as_slice()].concat();
    Array::from_slice(&damping, &[1, T_FREQ_DIM])
}
