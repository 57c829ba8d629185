//! Where a model's weights come from: a transformers checkpoint directory (`config.json`
//! and `model.safetensors`, or shards listed by `model.safetensors.index.json`; a
//! `Qwen3Model`'s names or a `Qwen3ForCausalLM`'s under `model.`), or the built-in random
//! weights; and writing a model back in that layout. [`load`] reads the base model,
//! [`load_causal_lm`] the base model and its output head.
//!
//! The decoder layers' linear layers may be stored quantized (this project's layout, see
//! [`mlx::nn::quantize`], or mlx-lm's: `scales` and `biases` beside the packed `weight`,
//! `quantization` in `config.json`; a quantized embedding table, which mlx-lm writes, is
//! dequantized at load) or quantized at load ([`LoadOptions::quantize`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use mlx::io::{load_checkpoint, save_checkpoint, Checkpoint};
use mlx::module::LoadReport;
use mlx::nn::quant::{MatmulPath, ProbeShape, QuantConfig, QuantizedWeight};
use mlx::nn::quantize::{self, quantized_templates, unquantizable, LoadQuantization, SCALE_SUFFIX};
use mlx::nn::{Dense, Linear, QuantReport};
use mlx::{random, Array, Dtype, Module};

use crate::causal_lm::Qwen3ForCausalLM;
use crate::config::Qwen3Config;
use crate::model::Qwen3Model;
use crate::{Qwen3Error, Result};

/// The file transformers writes an unsharded checkpoint to.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Seed of the built-in models' weights.
const BUILTIN_SEED: u64 = 0x0e3;
/// The prefix `Qwen3ForCausalLM` (and other wrappers) store the base model under.
const PREFIX: &str = "model.";
/// The causal LM's output head: not part of the base model.
const LM_HEAD: &str = "lm_head.weight";

/// How to load a model. A `Dtype` converts into the options that load every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The dtype the model computes in; stored tensors are converted to it.
    pub dtype: Dtype,
    /// Which decoder layers to load; the others are never read from the file.
    pub layers: Layers,
    /// Quantize a dense checkpoint's linear layers in memory.
    pub quantize: Option<QuantConfig>,
    /// The matmul of quantized layers; `None` probes the device once (see
    /// [`mlx::nn::quant::probe`]).
    pub matmul: Option<MatmulPath>,
}

/// The decoder layers a model is loaded with: the first ones of the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    All,
    /// The layers Z-Image's text encoder runs: all but the last
    /// ([`Qwen3Config::encoder_depth`]).
    TextEncoder,
    First(usize),
}

impl LoadOptions {
    /// Only the layers Z-Image's text encoder runs, computing in `dtype`.
    pub fn text_encoder(dtype: Dtype) -> LoadOptions {
        LoadOptions {
            layers: Layers::TextEncoder,
            ..LoadOptions::from(dtype)
        }
    }

    /// The number of layers to load for `config`.
    fn depth(&self, config: &Qwen3Config) -> Result<usize> {
        let all = config.num_hidden_layers as usize;
        match self.layers {
            Layers::All => Ok(all),
            Layers::TextEncoder => Ok(config.encoder_depth()),
            Layers::First(n) if n <= all => Ok(n),
            Layers::First(n) => Err(Qwen3Error::Input(format!(
                "{n} layers asked of a model with {all}"
            ))),
        }
    }
}

impl From<Dtype> for LoadOptions {
    fn from(dtype: Dtype) -> LoadOptions {
        LoadOptions {
            dtype,
            layers: Layers::All,
            quantize: None,
            matmul: None,
        }
    }
}

/// Loads a checkpoint directory, its weights evaluated (tensors stored in the compute
/// dtype stay memory-mapped; others are converted once, and only those of the layers
/// loaded).
pub fn load(dir: &Path, options: impl Into<LoadOptions>) -> Result<Qwen3Model> {
    let options = options.into();
    if !dir.is_dir() {
        return Err(Qwen3Error::Input(format!(
            "{}: not a model directory",
            dir.display()
        )));
    }
    let config = Qwen3Config::from_file(&dir.join("config.json"))?;
    let checkpoint = load_checkpoint(dir)?;
    fill(config, checkpoint, options, dir)
}

/// A built-in model (`config` is usually [`Qwen3Config::tiny`] or
/// [`Qwen3Config::small`]) with [`random_weights`]. The layers loaded get the same
/// weights whatever `options.layers` says.
pub fn builtin(config: &Qwen3Config, options: impl Into<LoadOptions>) -> Result<Qwen3Model> {
    config.validate().map_err(|message| Qwen3Error::Config {
        path: PathBuf::from("<built-in>"),
        message,
    })?;
    fill(
        config.clone(),
        random_weights(config),
        options.into(),
        Path::new("<built-in>"),
    )
}

/// Loads a checkpoint directory as a causal LM computing in `dtype`: the base model (under
/// `model.` or unprefixed) and, unless `tie_word_embeddings`, `lm_head.weight`.
pub fn load_causal_lm(dir: &Path, dtype: Dtype) -> Result<Qwen3ForCausalLM> {
    if !dir.is_dir() {
        return Err(Qwen3Error::Input(format!(
            "{}: not a model directory",
            dir.display()
        )));
    }
    let config = Qwen3Config::from_file(&dir.join("config.json"))?;
    let checkpoint = load_checkpoint(dir)?;
    let (model, lm_head) = fill_parts(config, checkpoint, dtype.into(), dir, true)?;
    Ok(Qwen3ForCausalLM { model, lm_head })
}

/// A built-in causal LM: [`builtin`]'s weights, and for an untied `config` a random head
/// (`N(0, 1/hidden)`, from a key of its own).
pub fn builtin_causal_lm(config: &Qwen3Config, dtype: Dtype) -> Result<Qwen3ForCausalLM> {
    config.validate().map_err(|message| Qwen3Error::Config {
        path: PathBuf::from("<built-in>"),
        message,
    })?;
    let mut weights = random_weights(config);
    if !config.tie_word_embeddings {
        let head = random::normal(
            &[config.vocab_size, config.hidden_size],
            Dtype::F32,
            &random::key(BUILTIN_SEED + 1),
        ) * (1.0 / f64::from(config.hidden_size).sqrt());
        weights = Checkpoint::from_arrays(
            weights
                .iter()
                .map(|(name, a)| (name.to_string(), a.clone()))
                .chain([(LM_HEAD.to_string(), head)])
                .collect::<Vec<_>>(),
        );
    }
    let (model, lm_head) = fill_parts(
        config.clone(),
        weights,
        dtype.into(),
        Path::new("<built-in>"),
        true,
    )?;
    Ok(Qwen3ForCausalLM { model, lm_head })
}

/// Fills a model of `config` from `checkpoint` (read from `origin`); a causal LM's
/// `lm_head.weight` is left out.
fn fill(
    config: Qwen3Config,
    checkpoint: Checkpoint,
    options: LoadOptions,
    origin: &Path,
) -> Result<Qwen3Model> {
    fill_parts(config, checkpoint, options, origin, false).map(|(model, _)| model)
}

/// [`fill`], also returning the output head when `with_head` (an untied model without
/// `lm_head.weight` is a checkpoint that does not fit).
fn fill_parts(
    config: Qwen3Config,
    checkpoint: Checkpoint,
    options: LoadOptions,
    origin: &Path,
    with_head: bool,
) -> Result<(Qwen3Model, Option<Linear>)> {
    if !options.dtype.is_float() {
        return Err(Qwen3Error::Input(format!(
            "a model computes in a float dtype, not {}",
            options.dtype
        )));
    }
    let depth = options.depth(&config)?;
    let (checkpoint, mut unexpected, head) =
        base_model_tensors(quantize::from_mlx_names(checkpoint));
    let LoadQuantization { stored, matmul } = LoadQuantization::new(
        config.quantization,
        &checkpoint,
        options.quantize,
        options.matmul,
        options.dtype,
        probe_shape(&config),
    )
    .map_err(|source| Qwen3Error::Quantization {
        path: origin.to_path_buf(),
        source,
    })?;
    let mut checkpoint = match stored {
        Some(stored) => dequantize_embeddings(checkpoint, stored, options.dtype),
        None => checkpoint,
    };
    // Layers past the depth asked for are dropped unread; past the config's count they
    // are unexpected.
    let skipped: Vec<String> = checkpoint
        .names()
        .filter(|name| {
            layer_index(name).is_some_and(|i| i >= depth && i < config.num_hidden_layers as usize)
        })
        .map(str::to_owned)
        .collect();
    for name in &skipped {
        checkpoint.take(name);
    }
    let mut model = Qwen3Model::zeros(&config, depth, options.dtype);
    let mut other = match (stored, matmul) {
        (Some(stored), Some(matmul)) => quantized_templates(
            model.linears_mut(),
            &checkpoint,
            stored,
            matmul,
            options.dtype,
        ),
        _ => Vec::new(),
    };
    // Loading would convert integer tensors silently; a quantized layer's are checked
    // above.
    let integer_params: HashSet<String> = model
        .parameters()
        .into_iter()
        .filter(|(_, array)| !array.dtype().is_float())
        .map(|(name, _)| name)
        .collect();
    let head_entry = head.as_ref().map(|w| (LM_HEAD, w)).filter(|_| with_head);
    other.extend(
        checkpoint
            .iter()
            .chain(head_entry)
            .filter(|(name, array)| !array.dtype().is_float() && !integer_params.contains(*name))
            .map(|(name, array)| (name.to_string(), format!("stored as {}", array.dtype()))),
    );
    let mut report = LoadReport::default();
    model.load_from("", &mut checkpoint, &mut report);
    // transformers ties the head to the embeddings whatever the file holds.
    let mut lm_head = None;
    if with_head && !config.tie_word_embeddings {
        let mut head_layer = Linear::Dense(Dense {
            weight: Array::zeros(&[config.vocab_size, config.hidden_size], options.dtype),
            bias: None,
        });
        let mut source = Checkpoint::from_arrays(head.map(|w| (LM_HEAD.to_string(), w)));
        head_layer.load_from("lm_head", &mut source, &mut report);
        lm_head = Some(head_layer);
    }
    unexpected.extend(checkpoint.names().map(str::to_owned));
    unexpected.sort();
    report.unexpected = unexpected;
    report.wrongly_stored = other;
    if !report.is_clean() {
        return Err(Qwen3Error::Checkpoint {
            path: origin.to_path_buf(),
            report: Box::new(report),
        });
    }
    if let (Some(asked), Some(matmul)) = (options.quantize, matmul) {
        let keeps_dense = |_: &str, linear: &Linear| unquantizable(linear, &asked);
        quantize::quantize_linears(model.linears_mut(), asked, matmul, keeps_dense)?;
        model.config.quantization = Some(asked);
    }
    mlx::eval(
        model
            .parameters()
            .into_iter()
            .chain(lm_head.iter().flat_map(|h| h.parameters()))
            .map(|(_, a)| a),
    )?;
    Ok((model, lm_head))
}

/// The product the matmul probe times: the MLP's up projection (the largest layer) over
/// 512 tokens, the longest prompt Z-Image encodes by default.
pub fn probe_shape(config: &Qwen3Config) -> ProbeShape {
    ProbeShape {
        tokens: 512,
        out: config.intermediate_size,
        inp: config.hidden_size,
    }
}

/// What a loaded model's linear layers are; the matmul path is the quantized layers' own.
pub fn quant_report(model: &mut Qwen3Model) -> QuantReport {
    let (bytes, parameters) = (model.nbytes(), model.num_parameters());
    let config = model.config.quantization;
    let linears = model.linears_mut();
    let matmul = linears.iter().find_map(|(_, linear)| match &**linear {
        Linear::Quantized(q) => Some(q.matmul),
        Linear::Dense(_) => None,
    });
    let keeps_dense =
        |_: &str, linear: &Linear| config.and_then(|config| unquantizable(linear, &config));
    QuantReport::of(bytes, parameters, linears, config, matmul, keeps_dense)
}

/// The embedding table as a float one when it is stored quantized (mlx-lm quantizes it
/// with the linear layers): an embedding is a lookup, kept dense here.
fn dequantize_embeddings(
    mut checkpoint: Checkpoint,
    config: QuantConfig,
    dtype: Dtype,
) -> Checkpoint {
    let name = |suffix: &str| format!("embed_tokens{suffix}");
    let Some(scales) = checkpoint.take(&name(SCALE_SUFFIX)) else {
        return checkpoint;
    };
    let Some(weights) = checkpoint.take(&name(".weight")) else {
        // Without its table the scales are reported as unexpected.
        return restored(checkpoint, (name(SCALE_SUFFIX), scales));
    };
    let biases = checkpoint.take(&name(".weight_qbias"));
    let table = QuantizedWeight::stored(config, weights, scales, biases).dequantize(dtype);
    restored(checkpoint, (name(".weight"), table))
}

/// `checkpoint` with `tensor` added.
fn restored(checkpoint: Checkpoint, tensor: (String, Array)) -> Checkpoint {
    let tensors: Vec<(String, Array)> = checkpoint
        .iter()
        .map(|(name, array)| (name.to_string(), array.clone()))
        .chain([tensor])
        .collect();
    Checkpoint::from_arrays(tensors)
}

/// The base model's tensors under their `Qwen3Model` names: a checkpoint that stores
/// them under `model.` (it has `model.embed_tokens.weight`) loses the prefix, and a
/// causal LM's `lm_head.weight` is set aside (and returned last). Also returns the names
/// that fit neither layout (unprefixed tensors of a prefixed checkpoint), to report as
/// unexpected.
fn base_model_tensors(mut checkpoint: Checkpoint) -> (Checkpoint, Vec<String>, Option<Array>) {
    let prefixed = checkpoint
        .get(&format!("{PREFIX}embed_tokens.weight"))
        .is_some();
    let head = checkpoint.take(LM_HEAD);
    if !prefixed {
        return (checkpoint, Vec::new(), head);
    }
    let names: Vec<String> = checkpoint.names().map(str::to_owned).collect();
    let mut unexpected = Vec::new();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let Some(array) = checkpoint.take(&name) else {
            continue;
        };
        match name.strip_prefix(PREFIX) {
            Some(base) => tensors.push((base.to_string(), array)),
            None => unexpected.push(name),
        }
    }
    (Checkpoint::from_arrays(tensors), unexpected, head)
}

/// `N` of a tensor `layers.N.…`.
fn layer_index(name: &str) -> Option<usize> {
    name.strip_prefix("layers.")?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Refuses to write a checkpoint into a directory that already holds one (see
/// [`mlx::io::holds_checkpoint`]).
pub fn check_new_target(dir: &Path) -> Result<()> {
    if mlx::io::holds_checkpoint(dir) {
        return Err(Qwen3Error::Input(format!(
            "{}: already holds a checkpoint; choose a new directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Writes `model` as transformers writes a `Qwen3Model`: `config.json` and
/// `model.safetensors`, names without a prefix, float tensors in `dtype` (a float dtype;
/// a quantized layer's integer tensors keep theirs). Only a model loaded whole can be
/// written.
pub fn save(model: &Qwen3Model, dir: &Path, dtype: Dtype) -> Result<()> {
    let tensors = model.parameters();
    write_checkpoint(model, tensors, dir, dtype, "Qwen3Model")
}

/// Writes `model` as transformers writes a `Qwen3ForCausalLM` (what mlx-lm reads too):
/// the base model's tensors under `model.`, `lm_head.weight` unless the head is tied, in
/// `dtype` (a float dtype), with `config.json`.
pub fn save_causal_lm(model: &Qwen3ForCausalLM, dir: &Path, dtype: Dtype) -> Result<()> {
    let tensors = model.parameters();
    write_checkpoint(&model.model, tensors, dir, dtype, "Qwen3ForCausalLM")
}

/// `tensors` (all of `model`'s layers) and `model`'s config as `architecture`.
fn write_checkpoint(
    model: &Qwen3Model,
    tensors: Vec<(String, &Array)>,
    dir: &Path,
    dtype: Dtype,
    architecture: &str,
) -> Result<()> {
    let all = model.config.num_hidden_layers as usize;
    if model.layers.len() != all {
        return Err(Qwen3Error::Input(format!(
            "the model was loaded with {} of its {all} layers; load all of them to save it",
            model.layers.len()
        )));
    }
    let config = Qwen3Config {
        // MLX's names of float dtypes are PyTorch's.
        dtype: Some(dtype.name().to_string()),
        architectures: vec![architecture.into()],
        ..model.config.clone()
    };
    // A `Value` of plain JSON types always serializes.
    let text = serde_json::to_string_pretty(&config.to_json()).unwrap_or_default();
    save_checkpoint(dir, WEIGHTS_FILE, tensors, dtype, &text)?;
    Ok(())
}

/// Deterministic random weights of `config`'s shapes (all its layers), scaled so
/// activations stay O(1) and the built-in pipeline's caption features vary with the
/// prompt: linear weights `N(0, 1/fan_in)`, norm weights `1 + 0.1 N(0, 1)`, embeddings
/// `N(0, 1)`. Each tensor draws from its own key, in name order.
pub fn random_weights(config: &Qwen3Config) -> Checkpoint {
    let shapes = Qwen3Model::zeros(config, config.num_hidden_layers as usize, Dtype::F32);
    let params = shapes.parameters();
    let keys = random::split(&random::key(BUILTIN_SEED), params.len() as i32);
    let arrays = params.into_iter().zip(keys).map(|((name, like), key)| {
        let noise = random::normal(like.shape(), Dtype::F32, &key);
        let value = if name == "embed_tokens.weight" {
            noise
        } else if like.ndim() == 1 {
            noise * 0.1 + 1.0
        } else {
            let fan_in = like.dim(1).unwrap_or(1);
            noise * (1.0 / f64::from(fan_in).sqrt())
        };
        (name, value)
    });
    Checkpoint::from_arrays(arrays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_indices_are_read_from_names() {
        assert_eq!(layer_index("layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_index("embed_tokens.weight"), None);
        assert_eq!(layer_index("layers.x.mlp"), None);
    }

    #[test]
    fn text_encoder_options_load_all_but_the_last_layer() {
        let config = Qwen3Config::tiny();
        assert_eq!(
            LoadOptions::text_encoder(Dtype::F32)
                .depth(&config)
                .unwrap(),
            1
        );
        assert_eq!(LoadOptions::from(Dtype::F32).depth(&config).unwrap(), 2);
        let too_many = LoadOptions {
            layers: Layers::First(3),
            ..LoadOptions::from(Dtype::F32)
        };
        assert!(too_many.depth(&config).is_err());
    }
}
