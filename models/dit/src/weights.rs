//! Where a model's weights come from: a diffusers-layout directory (`config.json` and one
//! or many `*.safetensors`, sharded ones with `*.safetensors.index.json`) or a built-in
//! model with deterministic random weights; and writing a model back in that layout. Linear
//! layers may be stored quantized (`dit quantize`) or quantized at load (`--fp8`).

use std::collections::{BTreeMap, BTreeSet};
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
use mlx::nn::quant::{self, MatmulPath, ProbeShape, QuantConfig, QuantFormat, GROUP_SIZE};
use mlx::nn::{Linear, QuantizedLinear};

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
    /// Quantize a dense checkpoint's linear layers in memory (`--fp8`).
    pub fp8: Option<QuantFormat>,
    /// The matmul of quantized layers; `None` probes the device once (see
    /// [`quant::probe`]). Tests force one path or the other.
    pub matmul: Option<MatmulPath>,
}

impl From<Dtype> for LoadOptions {
    fn from(dtype: Dtype) -> LoadOptions {
        LoadOptions {
            dtype,
            fp8: None,
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

/// What a loaded model's linear layers are (their format is `config.quantization`):
/// `dit info` and `dit quantize` report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantReport {
    /// How the quantized layers multiply; `None` for a dense model.
    pub matmul: Option<MatmulPath>,
    /// Quantized linear layers.
    pub quantized: usize,
    /// The linear layers left dense (all of them in a dense model), each with the reason.
    pub dense: Vec<(String, String)>,
    /// Bytes of the weights were every linear layer dense in the compute dtype.
    pub dense_bytes: usize,
    /// The model's parameters (a quantized weight counts its float elements, not the
    /// packed words).
    pub parameters: usize,
}

impl QuantReport {
    fn of(model: &mut ZImage, matmul: Option<MatmulPath>) -> QuantReport {
        let mut report = QuantReport {
            matmul,
            quantized: 0,
            dense: Vec::new(),
            dense_bytes: model.nbytes(),
            parameters: model.num_parameters(),
        };
        for (path, linear) in model.linears_mut() {
            match &*linear {
                Linear::Quantized(q) => {
                    let dense = linear.dense_parameters();
                    report.quantized += 1;
                    report.parameters = report.parameters + dense - q.num_parameters();
                    report.dense_bytes = report.dense_bytes + dense * q.dtype.size() - q.nbytes();
                }
                Linear::Dense(_) => {
                    let reason =
                        ZImage::keeps_dense(&path, linear).unwrap_or_else(|| "stored dense".into());
                    report.dense.push((path, reason));
                }
            }
        }
        report
    }
}

/// Loads a model, its weights evaluated (a checkpoint in the compute dtype stays
/// memory-mapped, others are converted once). A checkpoint written by `dit quantize` is
/// recognized by its `config.json`; `options.fp8` quantizes a dense one in memory.
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
    let mut stored_dtypes = BTreeMap::new();
    let mut stored_bytes = 0;
    for (_, array) in checkpoint.iter() {
        *stored_dtypes.entry(array.dtype().to_string()).or_insert(0) += 1;
        stored_bytes += array.nbytes();
    }
    let stored = stored_format(source, &config, &checkpoint)?;
    if let (Some(stored), Some(_)) = (stored, options.fp8) {
        return Err(DitError::Input(format!(
            "{source} is already quantized ({stored}): quantization applies to dense checkpoints"
        )));
    }
    let matmul = stored.or(options.fp8).map(|format| {
        options
            .matmul
            .unwrap_or_else(|| quant::probe(format, options.dtype, probe_shape(&config)))
    });
    let mut model = ZImage::zeros(&config, options.dtype);
    let filled = match (stored, matmul) {
        (Some(format), Some(matmul)) => fill_quantized(&mut model, checkpoint, format, matmul),
        _ => fill(&mut model, checkpoint, Vec::new()),
    };
    filled.map_err(|report| DitError::Checkpoint {
        model: source.to_string(),
        report: Box::new(report),
    })?;
    if let (Some(format), Some(matmul)) = (options.fp8, matmul) {
        quantize_linears(&mut model, format, matmul)?;
        model.config.quantization = Some(QuantConfig::new(format));
    }
    mlx::eval(model.parameters().into_iter().map(|(_, a)| a))?;
    let quantization = QuantReport::of(&mut model, matmul);
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

/// The format a checkpoint is quantized in, from `config.json`, checked against the
/// tensors: quantized layers are those with a `<layer>.weight_scale`.
fn stored_format(
    source: &ModelSource,
    config: &DitConfig,
    checkpoint: &Checkpoint,
) -> Result<Option<QuantFormat>> {
    let mut scales = checkpoint
        .names()
        .filter(|name| name.ends_with(QUANT_SCALE_SUFFIX));
    let first = scales.next();
    let message = match (&config.quantization, first) {
        (Some(q), None) => format!(
            "config.json records {} quantization, but no tensor is quantized (no *{QUANT_SCALE_SUFFIX})",
            q.mode
        ),
        (None, Some(name)) => format!(
            "{name} and {} more quantized tensors, but config.json records no quantization",
            scales.count()
        ),
        (quantization, _) => return Ok(quantization.as_ref().map(|q| q.mode)),
    };
    let path = match source {
        ModelSource::Dir(dir) => dir.join("config.json"),
        ModelSource::Builtin(builtin) => PathBuf::from(builtin.name()),
    };
    Err(DitError::Config { path, message })
}

/// The suffix that marks a quantized layer's tensors in a checkpoint.
const QUANT_SCALE_SUFFIX: &str = ".weight_scale";

/// [`fill`]s `model` from a quantized checkpoint: first turns its dense layers into
/// quantized ones wherever `checkpoint` holds `<layer>.weight_scale`, noting what cannot
/// fit: a quantized layer whose input features are not whole groups, and tensors of the
/// wrong dtype (loading would convert them silently).
fn fill_quantized(
    model: &mut ZImage,
    checkpoint: Checkpoint,
    format: QuantFormat,
    matmul: MatmulPath,
) -> std::result::Result<(), LoadReport> {
    let dtype = model.dtype();
    let mut problems = Vec::new();
    for (path, linear) in model.linears_mut() {
        let Linear::Dense(dense) = &*linear else {
            continue;
        };
        if checkpoint
            .get(&format!("{path}{QUANT_SCALE_SUFFIX}"))
            .is_none()
        {
            continue;
        }
        let (out, inp) = linear.features();
        if inp % GROUP_SIZE != 0 {
            problems.push((
                path,
                format!(
                    "quantized, but its {inp} input features are not whole groups of {GROUP_SIZE}"
                ),
            ));
            continue;
        }
        let template =
            QuantizedLinear::zeros((out, inp), dense.bias.is_some(), format, matmul, dtype);
        problems.extend(wrong_dtypes(&path, &template, &checkpoint));
        *linear = Linear::Quantized(template);
    }
    fill(model, checkpoint, problems)
}

/// The tensors of the quantized layer at `path` whose stored dtype `template` cannot take:
/// packed words and E8M0 scales must be stored as such; floats may be any float dtype.
fn wrong_dtypes(
    path: &str,
    template: &QuantizedLinear,
    checkpoint: &Checkpoint,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (name, array) in template.parameters() {
        let name = format!("{path}.{name}");
        let expected = array.dtype();
        if let Some(found) = checkpoint.get(&name).map(Array::dtype) {
            if found != expected && !(found.is_float() && expected.is_float()) {
                problems.push((name, format!("expected {expected}, found {found}")));
            }
        }
    }
    problems
}

/// Quantizes every linear layer of `model` that [`ZImage::keeps_dense`] allows (lazily).
fn quantize_linears(model: &mut ZImage, format: QuantFormat, matmul: MatmulPath) -> Result<()> {
    for (path, linear) in model.linears_mut() {
        if ZImage::keeps_dense(&path, linear).is_some() {
            continue;
        }
        if let Linear::Dense(dense) = &*linear {
            *linear = Linear::Quantized(QuantizedLinear::from_dense(dense, format, matmul)?);
        }
    }
    Ok(())
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

/// The float dtype a model's tensors are stored in: the checkpoint's own when all its float
/// tensors share one, else float32 (which holds float16 and bfloat16 exactly), and float32
/// for the built-in models.
pub fn stored_dtype(source: &ModelSource) -> Result<Dtype> {
    let ModelSource::Dir(dir) = source else {
        return Ok(Dtype::F32);
    };
    let (_, checkpoint) = read_dir(dir)?;
    let floats: BTreeSet<Dtype> = checkpoint
        .iter()
        .map(|(_, array)| array.dtype())
        .filter(|dtype| dtype.is_float())
        .collect();
    Ok(match floats.into_iter().collect::<Vec<_>>()[..] {
        [single] => single,
        _ => Dtype::F32,
    })
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
/// file, float tensors in `dtype`. A quantized layer's packed weight and E8M0 scales keep
/// their integer dtypes.
pub fn save(model: &ZImage, dir: &Path, dtype: Dtype) -> Result<()> {
    let tensors: Vec<(String, Array)> = model
        .parameters()
        .into_iter()
        .map(|(name, array)| {
            let stored = if array.dtype().is_float() {
                array.astype(dtype)
            } else {
                array.clone()
            };
            (name, stored)
        })
        .collect();
    // A `Value` always serializes.
    let config = serde_json::to_string_pretty(&model.config.to_json()).unwrap_or_default();
    save_checkpoint(
        dir,
        WEIGHTS_FILE,
        tensors.iter().map(|(n, a)| (n, a)),
        &config,
    )?;
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
