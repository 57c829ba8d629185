//! The loaded pipeline: tokenizer, text encoder, transformer, VAE and scheduler config, from
//! a diffusers pipeline folder, a transformer-only checkpoint, or built in.
//!
//! Memory across phases: the text encoder is loaded for prompt encoding and dropped
//! afterwards (its arrays leave with it), unless it is kept resident for a server; the
//! transformer and the VAE stay loaded. Nothing here frees by hand: each phase's arrays
//! are locals of the function that runs it.

use std::path::{Path, PathBuf};

use dit::lora::{self, Applied};
use dit::weights::{
    self as dit_weights, Builtin, LoadOptions as DitLoadOptions, Loaded, ModelSource,
};
use mlx::nn::{MatmulPath, QuantConfig};
use mlx::{Array, Dtype, Module};
use qwen3::{weights as qwen3_weights, Qwen3Config, Qwen3Model, Tokenizer};
use vae::{AutoencoderKL, DiagonalGaussian, Tiling, VaeConfig};

use crate::folder::{model_index_json, ModelDir};
use crate::prompt::{self, PromptEmbeds};
use crate::scheduler::SchedulerConfig;
use crate::{Error, Result};

/// Seed of the built-in text encoders' and VAEs' weights (the transformer has its own).
const BUILTIN_SEED: u64 = 0x21a6e;

/// How to load a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// The dtype every component computes in.
    pub dtype: Dtype,
    /// Quantize the linear layers of a dense transformer and text encoder at load.
    pub quantize: Option<QuantConfig>,
    /// How quantized layers (stored or quantized at load) compute; `None` probes the
    /// device once per component (see [`mlx::nn::quant::probe`]).
    pub matmul: Option<MatmulPath>,
    /// Keep the text encoder loaded between prompts (a server's choice); otherwise it is
    /// loaded for each encoding and dropped before denoising.
    pub keep_text_encoder: bool,
    /// Load the VAE's encoder too, for image to image and inpainting.
    pub vae_encoder: bool,
    /// LoRA adapters applied to the transformer at load, in order.
    pub loras: Vec<LoraSpec>,
    /// Skip the layers of an adapter that match no layer of the transformer (they are
    /// counted in [`Pipeline::adapters`]) instead of refusing the adapter.
    pub lora_lenient: bool,
}

impl From<Dtype> for LoadOptions {
    fn from(dtype: Dtype) -> LoadOptions {
        LoadOptions {
            dtype,
            quantize: None,
            matmul: None,
            keep_text_encoder: false,
            vae_encoder: false,
            loras: Vec::new(),
            lora_lenient: false,
        }
    }
}

/// A LoRA adapter file and the scale its update is applied at (1: as trained).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl std::fmt::Display for LoraSpec {
    /// `FILE:SCALE`, as [`LoraSpec::parse`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.scale)
    }
}

impl LoraSpec {
    /// `FILE` or `FILE:SCALE` (the command line's spelling, as ComfyUI-style tools write it).
    pub fn parse(arg: &str) -> std::result::Result<LoraSpec, String> {
        let split = arg
            .rsplit_once(':')
            .filter(|(path, _)| !path.is_empty())
            .and_then(|(path, scale)| Some((path, scale.parse::<f32>().ok()?)));
        let (path, scale) = split.unwrap_or((arg, 1.0));
        if !scale.is_finite() {
            return Err(format!("{arg}: the scale must be a number"));
        }
        Ok(LoraSpec {
            path: PathBuf::from(path),
            scale,
        })
    }
}

/// Where the text encoder's weights come from when it is (re)loaded.
#[derive(Clone, Debug)]
enum EncoderSource {
    Builtin(Qwen3Config),
    Dir(PathBuf),
}

impl EncoderSource {
    /// The encoder with only the layers prompt embeddings run, quantized at load if
    /// `quantize` says so.
    fn load(
        &self,
        dtype: Dtype,
        quantize: Option<QuantConfig>,
        matmul: Option<MatmulPath>,
    ) -> Result<Qwen3Model> {
        let options = qwen3::LoadOptions {
            quantize,
            matmul,
            ..qwen3::LoadOptions::text_encoder(dtype)
        };
        Ok(match self {
            EncoderSource::Builtin(config) => qwen3_weights::builtin(config, options)?,
            EncoderSource::Dir(dir) => qwen3_weights::load(dir, options)?,
        })
    }

    /// How errors name it.
    fn name(&self) -> String {
        match self {
            EncoderSource::Builtin(_) => "the built-in text encoder".to_string(),
            EncoderSource::Dir(dir) => dir.join("config.json").display().to_string(),
        }
    }
}

/// The tokenizer and the text encoder (resident or loaded on demand).
struct TextStack {
    tokenizer: Tokenizer,
    source: EncoderSource,
    resident: Option<Qwen3Model>,
}

/// A loaded Z-Image pipeline.
pub struct Pipeline {
    pub source: ModelSource,
    pub transformer: Loaded,
    /// The LoRA adapters applied to the transformer, with what each did.
    pub adapters: Vec<(LoraSpec, Applied)>,
    pub vae: Option<AutoencoderKL>,
    pub scheduler: SchedulerConfig,
    text: Option<TextStack>,
    dtype: Dtype,
    quantize: Option<QuantConfig>,
    matmul: Option<MatmulPath>,
}

impl Pipeline {
    /// Loads `source`: a built-in pipeline, a pipeline folder, or a transformer checkpoint
    /// (then without text encoder and VAE).
    pub fn load(source: &ModelSource, options: impl Into<LoadOptions>) -> Result<Pipeline> {
        let options = options.into();
        let vae_parts = if options.vae_encoder {
            vae::Parts::Both
        } else {
            vae::Parts::Decoder
        };
        let dit_options = DitLoadOptions {
            quantize: options.quantize,
            matmul: options.matmul,
            ..DitLoadOptions::from(options.dtype)
        };
        let (transformer, text, vae, scheduler) = match source {
            ModelSource::Builtin(builtin) => {
                let transformer = dit_weights::load(source, dit_options)?;
                let (encoder_config, vae_config) = builtin_configs(*builtin);
                let text = TextStack {
                    tokenizer: Tokenizer::builtin()?,
                    source: EncoderSource::Builtin(encoder_config),
                    resident: None,
                };
                let vae = AutoencoderKL::random(&vae_config, BUILTIN_SEED, options.dtype)?;
                (
                    transformer,
                    Some(text),
                    Some(vae),
                    SchedulerConfig::default(),
                )
            }
            ModelSource::Dir(dir) => match ModelDir::inspect(dir)? {
                ModelDir::Transformer(dir) => {
                    let transformer =
                        dit_weights::load(&ModelSource::Dir(dir.clone()), dit_options)?;
                    let scheduler = SchedulerConfig::for_model_dir(&dir)?;
                    (transformer, None, None, scheduler)
                }
                ModelDir::Pipeline(dirs) => {
                    let scheduler = SchedulerConfig::for_model_dir(&dirs.scheduler)?;
                    let encoder_config = dirs.text_encoder.join("config.json");
                    let hidden = Qwen3Config::from_file(&encoder_config)?.hidden_size;
                    let text = TextStack {
                        tokenizer: Tokenizer::from_dir(&dirs.tokenizer)?,
                        source: EncoderSource::Dir(dirs.text_encoder.clone()),
                        resident: None,
                    };
                    let transformer = dit_weights::load(
                        &ModelSource::Dir(dirs.transformer.clone()),
                        dit_options,
                    )?;
                    let encoder_name = encoder_config.display().to_string();
                    check_caption_width(&encoder_name, hidden, &transformer)?;
                    let vae = AutoencoderKL::load(&dirs.vae, options.dtype, vae_parts)?;
                    (transformer, Some(text), Some(vae), scheduler)
                }
            },
        };
        let mut pipeline = Pipeline {
            source: source.clone(),
            transformer,
            adapters: Vec::with_capacity(options.loras.len()),
            vae,
            scheduler,
            text,
            dtype: options.dtype,
            quantize: options.quantize,
            matmul: options.matmul,
        };
        for spec in &options.loras {
            let adapter = lora::read(&spec.path)?;
            pipeline.apply_lora(spec, &adapter, options.lora_lenient)?;
        }
        if options.keep_text_encoder {
            let encoder = pipeline
                .text
                .as_ref()
                .map(|t| pipeline.load_encoder(&t.source));
            if let (Some(text), Some(encoder)) = (&mut pipeline.text, encoder) {
                text.resident = Some(encoder?);
            }
        }
        Ok(pipeline)
    }

    /// The picture side drawn when none is asked for: Z-Image's 1024 for a model folder,
    /// 256 for the built-in random pipelines (which draw noise at any size).
    pub fn default_size(&self) -> i32 {
        match &self.source {
            ModelSource::Builtin(_) => 256,
            ModelSource::Dir(_) => 1024,
        }
    }

    /// Whether prompts can be encoded (a pipeline, not a lone transformer).
    pub fn has_text_encoder(&self) -> bool {
        self.text.is_some()
    }

    /// The adapters applied at load, as a PNG records them: `FILE:SCALE, ...`.
    pub fn loras_text(&self) -> Option<String> {
        let specs: Vec<String> = self.adapters.iter().map(|(s, _)| s.to_string()).collect();
        (!specs.is_empty()).then(|| specs.join(", "))
    }

    /// The transformer.
    pub fn transformer(&self) -> &dit::ZImage {
        &self.transformer.model
    }

    /// The tokenizer, for a pipeline.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.text.as_ref().map(|t| &t.tokenizer)
    }

    /// The text encoder, when it is kept loaded ([`LoadOptions::keep_text_encoder`]).
    pub fn text_encoder(&self) -> Option<&Qwen3Model> {
        self.text.as_ref().and_then(|t| t.resident.as_ref())
    }

    /// Encodes `prompts` with one load of the text encoder (unless it is resident), which
    /// is dropped again before this returns.
    pub fn encode_prompts(
        &self,
        prompts: &[&str],
        max_sequence_length: usize,
    ) -> Result<Vec<PromptEmbeds>> {
        let text = self.text.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} is a transformer checkpoint without a text encoder: give caption \
                 features instead of a prompt",
                self.source
            ))
        })?;
        if max_sequence_length == 0 {
            return Err(Error::Input(
                "the maximum sequence length must be at least 1".into(),
            ));
        }
        let loaded;
        let encoder = match &text.resident {
            Some(encoder) => encoder,
            None => {
                loaded = self.load_encoder(&text.source)?;
                &loaded
            }
        };
        prompts
            .iter()
            .map(|prompt| prompt::encode(&text.tokenizer, encoder, prompt, max_sequence_length))
            .collect()
    }

    /// The text encoder with the layers prompt embeddings need, checked against the
    /// transformer's caption width.
    fn load_encoder(&self, source: &EncoderSource) -> Result<Qwen3Model> {
        let encoder = source.load(self.dtype, self.quantize, self.matmul)?;
        check_caption_width(
            &source.name(),
            encoder.config.hidden_size,
            &self.transformer,
        )?;
        Ok(encoder)
    }

    /// Applies an adapter read from `spec.path` at `spec.scale` to the transformer (see
    /// [`lora::apply`]) and records it in [`adapters`](Self::adapters).
    pub fn apply_lora(
        &mut self,
        spec: &LoraSpec,
        adapter: &lora::Adapter,
        lenient: bool,
    ) -> Result<()> {
        let applied = lora::apply(&mut self.transformer.model, adapter, spec.scale, lenient)?;
        self.adapters.push((spec.clone(), applied));
        Ok(())
    }

    /// Decodes `latents` `[B, 16, h, w]` as the transformer produces them to the VAE's raw
    /// output `[B, 3, 8h, 8w]` (before clamping).
    pub fn decode(&self, latents: &Array, tiling: Tiling) -> Result<Array> {
        let vae = self.require_vae("decode latents")?;
        Ok(vae.decode_latents_with(latents, tiling)?)
    }

    /// The VAE, or an error saying the pipeline cannot `action` without one.
    pub fn require_vae(&self, action: &str) -> Result<&AutoencoderKL> {
        self.vae.as_ref().ok_or_else(|| {
            Error::Input(format!(
                "{} is a transformer checkpoint without a VAE: it cannot {action}",
                self.source
            ))
        })
    }

    /// Encodes pictures `[B, 3, H, W]` in `[-1, 1]` to the VAE's posterior over latents
    /// (the VAE must have been loaded with its encoder: [`LoadOptions::vae_encoder`]).
    pub fn encode_image(&self, image: &Array, tiling: Tiling) -> Result<DiagonalGaussian> {
        let vae = self.require_vae("encode pictures")?;
        Ok(vae.encode_with(&image.astype(vae.dtype()), tiling)?)
    }

    /// Bytes of the resident weights (the text encoder's only when kept).
    pub fn weights_bytes(&self) -> usize {
        let encoder = self
            .text
            .as_ref()
            .and_then(|t| t.resident.as_ref())
            .map_or(0, Module::nbytes);
        self.transformer.model.nbytes() + self.vae.as_ref().map_or(0, Module::nbytes) + encoder
    }
}

/// The text encoder's width must be the transformer's caption width.
fn check_caption_width(encoder: &str, hidden: i32, transformer: &Loaded) -> Result<()> {
    let cap = transformer.model.config.cap_feat_dim;
    if hidden != cap {
        return Err(Error::Input(format!(
            "{encoder}: hidden_size {hidden} differs from the transformer's cap_feat_dim {cap}"
        )));
    }
    Ok(())
}

/// The pipeline folder `dir`, for commands that need one component of it; a transformer
/// checkpoint alone has none of the others.
fn pipeline_dirs(dir: &Path, component: &str) -> Result<crate::folder::PipelineDirs> {
    match ModelDir::inspect(dir)? {
        ModelDir::Pipeline(dirs) => Ok(dirs),
        ModelDir::Transformer(_) => Err(Error::Input(format!(
            "{}: a transformer checkpoint, without a {component}",
            dir.display()
        ))),
    }
}

/// The VAE of `source` alone (its decoder), for decoding without loading the rest.
pub fn load_vae(source: &ModelSource, dtype: Dtype) -> Result<AutoencoderKL> {
    Ok(match source {
        ModelSource::Builtin(builtin) => {
            AutoencoderKL::random(&builtin_configs(*builtin).1, BUILTIN_SEED, dtype)?
        }
        ModelSource::Dir(dir) => {
            AutoencoderKL::load(&pipeline_dirs(dir, "VAE")?.vae, dtype, vae::Parts::Decoder)?
        }
    })
}

/// The tokenizer and text encoder of `source` alone, for encoding prompts without
/// loading the rest.
pub fn load_text_encoder(source: &ModelSource, dtype: Dtype) -> Result<(Tokenizer, Qwen3Model)> {
    let (tokenizer, encoder) = match source {
        ModelSource::Builtin(builtin) => (
            Tokenizer::builtin()?,
            EncoderSource::Builtin(builtin_configs(*builtin).0),
        ),
        ModelSource::Dir(dir) => {
            let dirs = pipeline_dirs(dir, "text encoder")?;
            (
                Tokenizer::from_dir(&dirs.tokenizer)?,
                EncoderSource::Dir(dirs.text_encoder),
            )
        }
    };
    Ok((tokenizer, encoder.load(dtype, None, None)?))
}

/// The text encoder and VAE that go with a built-in transformer: the encoder's width is
/// the transformer's caption width.
fn builtin_configs(builtin: Builtin) -> (Qwen3Config, VaeConfig) {
    match builtin {
        Builtin::Tiny => (Qwen3Config::tiny(), VaeConfig::tiny()),
        Builtin::Small => (Qwen3Config::small(), VaeConfig::small()),
    }
}

/// Writes a built-in pipeline as a diffusers pipeline folder, floats in `dtype`.
pub fn write_builtin(builtin: Builtin, dir: &Path, dtype: Dtype) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let transformer = dit_weights::load(&ModelSource::Builtin(builtin), Dtype::F32)?;
    dit_weights::save(&transformer.model, &dir.join("transformer"), dtype)?;
    drop(transformer);
    let (encoder_config, vae_config) = builtin_configs(builtin);
    let encoder = qwen3_weights::builtin(&encoder_config, Dtype::F32)?;
    qwen3_weights::save(&encoder, &dir.join("text_encoder"), dtype)?;
    drop(encoder);
    AutoencoderKL::random(&vae_config, BUILTIN_SEED, Dtype::F32)?.save(&dir.join("vae"), dtype)?;
    qwen3::tokenizer::write_builtin(&dir.join("tokenizer"))?;
    let scheduler_dir = dir.join("scheduler");
    std::fs::create_dir_all(&scheduler_dir).map_err(io(&scheduler_dir))?;
    let scheduler = scheduler_dir.join("scheduler_config.json");
    std::fs::write(&scheduler, pretty(&SchedulerConfig::default().to_json()))
        .map_err(io(&scheduler))?;
    let index = dir.join(crate::folder::MODEL_INDEX);
    std::fs::write(&index, pretty(&model_index_json())).map_err(io(&index))
}

fn pretty(value: &serde_json::Value) -> String {
    // A `Value` always serializes.
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}
