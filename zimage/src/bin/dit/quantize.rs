//! `dit quantize`: a pipeline folder (or a transformer checkpoint) with the linear layers
//! of its transformer and text encoder quantized; the VAE, tokenizer and scheduler copied
//! as they are.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dit::teacache::{Coefficients, COEFFICIENTS_FILE};
use dit::weights::{self, LoadOptions, ModelSource};
use mlx::io::load_checkpoint;
use mlx::nn::{MatmulPath, QuantConfig, QuantFormat, QuantReport};
use mlx::{Dtype, Module};
use zimage::folder::{ModelDir, PipelineDirs, MODEL_INDEX};

use crate::quantize_arg::quant_config;
use crate::{mib, model_source, CliResult};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small (their transformer), a pipeline folder or a transformer checkpoint,
    /// dense.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// The directory to write (created if missing; must not hold a checkpoint yet).
    #[arg(long)]
    out: PathBuf,
    /// affine4 or affine8 (integers with a scale and bias per group), mxfp4 or mxfp8
    /// (FP4 E2M1 or FP8 E4M3 with a power-of-two scale per 32), nvfp4 (FP4 E2M1 with an
    /// FP8 scale per 16), fp8 (FP8 E4M3 with a float32 scale per output channel).
    #[arg(long)]
    mode: QuantFormat,
    /// The affine modes' group size: 32, 64 or 128 (default 64 for affine4, 32 for
    /// affine8).
    #[arg(long)]
    group_size: Option<i32>,
    /// The components of a pipeline folder to quantize; the others are copied.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "transformer,text_encoder"
    )]
    components: Vec<Component>,
}

/// A pipeline component quantization applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum Component {
    Transformer,
    #[value(name = "text_encoder")]
    TextEncoder,
}

pub fn run(args: Args) -> CliResult {
    let config = quant_config(args.mode, args.group_size)?;
    weights::check_new_target(&args.out)?;
    if args.out.join(MODEL_INDEX).exists() {
        return Err(format!(
            "{}: already holds a pipeline; choose a new directory",
            args.out.display()
        )
        .into());
    }
    let components: BTreeSet<Component> = args.components.iter().copied().collect();
    match &args.model {
        ModelSource::Dir(dir) => match ModelDir::inspect(dir)? {
            ModelDir::Pipeline(dirs) => quantize_pipeline(&dirs, &args.out, config, &components),
            ModelDir::Transformer(dir) => {
                quantize_transformer(&ModelSource::Dir(dir), &args.out, config)
            }
        },
        builtin => quantize_transformer(builtin, &args.out, config),
    }
}

/// Writes `dirs`' pipeline to `out` with `components` quantized. Everything that can fail
/// on the source is read before anything is written.
fn quantize_pipeline(
    dirs: &PipelineDirs,
    out: &Path,
    config: QuantConfig,
    components: &BTreeSet<Component>,
) -> CliResult {
    let transformer = components
        .contains(&Component::Transformer)
        .then(|| load_transformer(&ModelSource::Dir(dirs.transformer.clone()), config))
        .transpose()?;
    let encoder = components
        .contains(&Component::TextEncoder)
        .then(|| load_text_encoder(&dirs.text_encoder, config))
        .transpose()?;
    let copied: Vec<&Path> = [
        (transformer.is_none(), &dirs.transformer),
        (encoder.is_none(), &dirs.text_encoder),
        (true, &dirs.tokenizer),
        (true, &dirs.vae),
        (true, &dirs.scheduler),
    ]
    .into_iter()
    .filter(|(copy, _)| *copy)
    .map(|(_, dir)| dir.as_path())
    .collect();
    for dir in copied {
        copy_dir(dir, &out.join(dir.file_name().unwrap_or_default()))?;
    }
    copy_file(&dirs.root.join(MODEL_INDEX), &out.join(MODEL_INDEX))?;
    if let Some(transformer) = transformer {
        transformer.write(&out.join("transformer"))?;
    }
    if let Some((model, dtype)) = encoder {
        let dir = out.join("text_encoder");
        qwen3::weights::save(&model, &dir, dtype)?;
        let mut model = model;
        let report = qwen3::weights::quant_report(&mut model);
        print_report("text encoder", &dir, &report, dtype, model.nbytes());
    }
    Ok(())
}

/// Writes a transformer checkpoint (built in or a directory) quantized, with the files
/// sampling reads.
fn quantize_transformer(source: &ModelSource, out: &Path, config: QuantConfig) -> CliResult {
    load_transformer(source, config)?.write(out)
}

/// A transformer quantized in memory, with what is written beside it.
struct QuantizedTransformer {
    source: ModelSource,
    loaded: weights::Loaded,
    dtype: Dtype,
    coefficients: Option<Coefficients>,
}

/// Quantizes from the weights as stored, so that the dense tensors are written back
/// unchanged.
fn load_transformer(source: &ModelSource, config: QuantConfig) -> Result<QuantizedTransformer> {
    let coefficients = weights::teacache_coefficients(source)?;
    let dtype = stored_dtype(source)?;
    let options = LoadOptions {
        quantize: Some(config),
        // Nothing runs the model here and the path is not written: no probe.
        matmul: Some(MatmulPath::Dequantize),
        ..LoadOptions::from(dtype)
    };
    Ok(QuantizedTransformer {
        source: source.clone(),
        loaded: weights::load(source, options)?,
        dtype,
        coefficients,
    })
}

impl QuantizedTransformer {
    fn write(self, out: &Path) -> CliResult {
        weights::save(&self.loaded.model, out, self.dtype)?;
        copy_sampling_files(&self.source, self.coefficients, out)?;
        let name = format!("the transformer {}", self.source);
        let bytes = self.loaded.model.nbytes();
        print_report(&name, out, &self.loaded.quantization, self.dtype, bytes);
        Ok(())
    }
}

/// The whole text encoder (all layers: a checkpoint is written whole), quantized from its
/// stored dtype.
fn load_text_encoder(dir: &Path, config: QuantConfig) -> Result<(qwen3::Qwen3Model, Dtype)> {
    let dtype = stored_dtype(&ModelSource::Dir(dir.to_path_buf()))?;
    let options = qwen3::LoadOptions {
        quantize: Some(config),
        matmul: Some(MatmulPath::Dequantize),
        ..qwen3::LoadOptions::from(dtype)
    };
    Ok((qwen3::weights::load(dir, options)?, dtype))
}

fn print_report(name: &str, out: &Path, report: &QuantReport, dtype: Dtype, bytes: usize) {
    let config = report.config.map(|c| c.to_string()).unwrap_or_default();
    println!(
        "wrote {name} to {} with {} linear layers in {config}, {} left dense{}",
        out.display(),
        report.quantized,
        report.dense.len(),
        if report.dense.is_empty() { "" } else { ":" },
    );
    for (path, reason) in &report.dense {
        println!("  {path}: {reason}");
    }
    println!(
        "weights {:.1} MiB in {dtype}, {:.1} MiB quantized",
        mib(report.dense_bytes),
        mib(bytes)
    );
}

/// The float dtype a model's tensors are stored in: the checkpoint's own when all its float
/// tensors share one, else float32 (which holds float16 and bfloat16 exactly), and float32
/// for the built-in models.
fn stored_dtype(source: &ModelSource) -> Result<Dtype> {
    let ModelSource::Dir(dir) = source else {
        return Ok(Dtype::F32);
    };
    let floats: BTreeSet<Dtype> = load_checkpoint(dir)?
        .iter()
        .map(|(_, array)| array.dtype())
        .filter(|dtype| dtype.is_float())
        .collect();
    Ok(match floats.into_iter().collect::<Vec<_>>()[..] {
        [single] => single,
        _ => Dtype::F32,
    })
}

/// What travels with a checkpoint for sampling holds for its quantized copy too: TeaCache's
/// polynomial (fitted on the dense model, which the quantized one approximates) and a
/// `scheduler_config.json` next to the weights.
fn copy_sampling_files(
    source: &ModelSource,
    coefficients: Option<Coefficients>,
    out: &Path,
) -> CliResult {
    if let Some(coefficients) = coefficients {
        coefficients.write(&out.join(COEFFICIENTS_FILE))?;
    }
    if let ModelSource::Dir(dir) = source {
        // Beside the transformer, or in a pipeline folder's scheduler/.
        let candidates = [
            dir.join(SCHEDULER_FILE),
            dir.join("../scheduler").join(SCHEDULER_FILE),
        ];
        if let Some(scheduler) = candidates.iter().find(|p| p.is_file()) {
            copy_file(scheduler, &out.join(SCHEDULER_FILE))?;
        }
    }
    Ok(())
}

const SCHEDULER_FILE: &str = "scheduler_config.json";

/// Copies the files of `from` (and its subfolders) into `to`, created.
fn copy_dir(from: &Path, to: &Path) -> CliResult {
    std::fs::create_dir_all(to).map_err(|e| format!("creating {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", from.display()))?
            .path();
        let target = to.join(path.file_name().unwrap_or_default());
        if path.is_dir() {
            copy_dir(&path, &target)?;
        } else {
            copy_file(&path, &target)?;
        }
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> CliResult {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    Ok(())
}
