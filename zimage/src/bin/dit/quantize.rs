//! `dit quantize`: a dense checkpoint with its linear layers quantized to 8 bits.

use std::path::{Path, PathBuf};

use dit::teacache::{Coefficients, COEFFICIENTS_FILE};
use dit::weights::{self, LoadOptions, ModelSource};
use mlx::nn::quant::{QuantFormat, BITS, GROUP_SIZE};
use mlx::Module;

use crate::{mib, model_source, transformer_source, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a dense checkpoint directory.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// The directory to write (created if missing; must not hold a checkpoint yet).
    #[arg(long)]
    out: PathBuf,
    /// mxfp8 (FP8 E4M3, a power-of-two scale per 32) or affine8 (8-bit integers, a scale
    /// and bias per 32).
    #[arg(long)]
    mode: QuantFormat,
}

pub fn run(mut args: Args) -> CliResult {
    // A pipeline folder's transformer is what is quantized.
    args.model = transformer_source(&args.model)?;
    weights::check_new_target(&args.out)?;
    // Everything that can fail on the source is read before anything is written.
    let coefficients = weights::teacache_coefficients(&args.model)?;
    // Quantize from the weights as stored, and write the dense tensors back unchanged.
    let dtype = weights::stored_dtype(&args.model)?;
    let options = LoadOptions {
        fp8: Some(args.mode),
        ..LoadOptions::from(dtype)
    };
    let loaded = weights::load(&args.model, options)?;
    weights::save(&loaded.model, &args.out, dtype)?;
    copy_sampling_files(&args.model, coefficients, &args.out)?;

    let report = &loaded.quantization;
    println!(
        "wrote the {} model to {} with {} linear layers in {} (group size {GROUP_SIZE}, {BITS} bits), {} left dense{}",
        args.model,
        args.out.display(),
        report.quantized,
        args.mode,
        report.dense.len(),
        if report.dense.is_empty() { "" } else { ":" },
    );
    for (path, reason) in &report.dense {
        println!("  {path}: {reason}");
    }
    println!(
        "weights {:.1} MiB in {dtype}, {:.1} MiB quantized",
        mib(report.dense_bytes),
        mib(loaded.model.nbytes())
    );
    Ok(())
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
            std::fs::copy(scheduler, out.join(SCHEDULER_FILE)).map_err(|e| {
                format!("copying {} to {}: {e}", scheduler.display(), out.display())
            })?;
        }
    }
    Ok(())
}

const SCHEDULER_FILE: &str = "scheduler_config.json";
