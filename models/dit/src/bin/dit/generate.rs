//! `dit generate`: the sampler end to end, with a progress bar and a JSON report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dit::preview;
use mlx::nn::QuantFormat;
use dit::sampler::{self, Caption, Request};
use dit::scheduler::SchedulerConfig;
use dit::teacache::{Coefficients, Mode, TeaCacheOptions};
use dit::weights::{self, LoadOptions, ModelSource};
use dit::ZImage;
use indicatif::{ProgressBar, ProgressStyle};
use mlx::io::{load_safetensors, save_safetensors};
use mlx::{Array, Module};
use serde_json::json;

use crate::{compute_dtype, info, mib, model_source, CliResult, FloatDtype};

/// Tokens of the seeded random caption used without `--cap-feats`.
const RANDOM_CAPTION_TOKENS: i32 = 64;

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a checkpoint directory.
    #[arg(long, value_parser = model_source, default_value = "tiny")]
    model: ModelSource,
    /// Denoising steps.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Image width in pixels (a multiple of 16).
    #[arg(long, default_value_t = 256)]
    width: i32,
    /// Image height in pixels (a multiple of 16).
    #[arg(long, default_value_t = 256)]
    height: i32,
    /// Seed of the initial noise (and of the random captions).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Caption features: a safetensors file with `cap_feats` [L, cap_feat_dim] or
    /// [1, L, cap_feat_dim] and, for --cfg, optionally `negative_cap_feats`. Without it,
    /// seeded random features of 64 tokens.
    #[arg(long)]
    cap_feats: Option<PathBuf>,
    /// Classifier-free guidance scale (0: no guidance, as Z-Image-Turbo samples).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    cfg: f32,
    /// Run the graph functions eagerly instead of compiled.
    #[arg(long)]
    no_compile: bool,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Quantize the linear layers at load: mxfp8 or affine8 (a dense checkpoint only).
    #[arg(long)]
    fp8: Option<QuantFormat>,
    /// Write a PNG preview of the final latents.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the final latents as tensor `latents`.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Print a JSON report as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// TeaCache: reuse the last noise prediction (naive) or the main blocks' residual
    /// (poly) on steps whose input barely changed.
    #[arg(long, value_enum, default_value = "off")]
    teacache: TeaCacheArg,
    /// TeaCache's threshold (default: 0.1 for naive, 0.3 for poly).
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f64>,
    /// Steps at the start that always compute (default: 3 with --cfg, else 1).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Poly mode's polynomial, from `dit teacache-fit` (default: the model's own).
    #[arg(long)]
    coefficients: Option<PathBuf>,
}

/// `--teacache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TeaCacheArg {
    Off,
    Naive,
    Poly,
}

impl TeaCacheArg {
    fn mode(self) -> Mode {
        match self {
            TeaCacheArg::Off => Mode::Off,
            TeaCacheArg::Naive => Mode::Naive,
            TeaCacheArg::Poly => Mode::Poly,
        }
    }
}

pub fn run(args: Args) -> CliResult {
    mlx::compile::set_eager(args.no_compile);
    let dtype = compute_dtype(args.dtype)?;
    let started = Instant::now();
    let options = LoadOptions {
        fp8: args.fp8,
        ..LoadOptions::from(dtype)
    };
    let loaded = weights::load(&args.model, options)?;
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let model = &loaded.model;
    let request = request(&args, model)?;

    let bar = progress_bar(args.steps);
    let step_bar = bar.clone();
    let generation = sampler::generate(model, &request, move |_, report| {
        step_bar.set_message(format!("{:.0} ms/step", report.elapsed.as_secs_f64() * 1e3));
        step_bar.inc(1);
    })?;
    bar.finish();

    if let Some(path) = &args.out {
        preview::write_png(&generation.latents, path)?;
    }
    if let Some(path) = &args.save_latents {
        save_safetensors(path, [("latents", &generation.latents)], &BTreeMap::new())?;
    }

    let step_ms: Vec<f64> = generation
        .steps
        .iter()
        .map(|s| s.elapsed.as_secs_f64() * 1e3)
        .collect();
    let active: Vec<usize> = generation.steps.iter().map(|s| s.active_bytes).collect();
    let peak = generation
        .steps
        .iter()
        .map(|s| s.peak_bytes)
        .max()
        .unwrap_or(0);
    let mean_ms = step_ms.iter().sum::<f64>() / step_ms.len().max(1) as f64;
    println!(
        "{} steps of {}x{} on the {} model: {:.0} ms/step, {} forward passes; weights {:.1} MiB, peak {:.1} MiB",
        args.steps,
        args.width,
        args.height,
        args.model,
        mean_ms,
        generation.forward_passes(),
        mib(model.nbytes()),
        mib(peak),
    );
    for (what, path) in [("preview", &args.out), ("latents", &args.save_latents)] {
        if let Some(path) = path {
            println!("wrote the {what} to {}", path.display());
        }
    }
    if args.json {
        let report = json!({
            "model": args.model.to_string(),
            "steps": args.steps,
            "width": args.width,
            "height": args.height,
            "seed": args.seed,
            "cfg": args.cfg,
            "compiled": !args.no_compile,
            "compute_dtype": dtype.to_string(),
            "forward_passes": generation.forward_passes(),
            "cache_hits": generation.cache_hits(),
            "computed_steps": generation.computed,
            "teacache": teacache_report(&request.teacache),
            "quantization": info::quantization_json(&loaded.quantization, &model.config, model.nbytes()),
            "timesteps": generation.schedule.timesteps,
            "step_ms": step_ms,
            "active_bytes": active,
            "peak_bytes": peak,
            "weights_bytes": model.nbytes(),
            "load_ms": load_ms,
            "total_ms": started.elapsed().as_secs_f64() * 1e3,
        });
        println!("{report}");
    }
    Ok(())
}

fn progress_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {elapsed}")
    {
        bar.set_style(style);
    }
    bar
}

/// The sampler request from the flags: captions from `--cap-feats` or seeded random ones,
/// the scheduler config shipped with a checkpoint directory or the default.
fn request(args: &Args, model: &ZImage) -> Result<Request, Box<dyn std::error::Error>> {
    let dim = model.config.cap_feat_dim;
    let random = |seed| Caption::random(RANDOM_CAPTION_TOKENS, dim, seed);
    let (caption, negative) = match &args.cap_feats {
        Some(path) => {
            let caption = read_caption(path, "cap_feats")?
                .ok_or_else(|| format!("{}: no tensor `cap_feats`", path.display()))?;
            let negative = read_caption(path, "negative_cap_feats")?;
            (caption, negative)
        }
        None => (random(args.seed.wrapping_add(1)), None),
    };
    let negative = negative.unwrap_or_else(|| random(args.seed.wrapping_add(2)));
    let scheduler = match &args.model {
        ModelSource::Dir(dir) => SchedulerConfig::for_model_dir(dir)?,
        ModelSource::Builtin(_) => SchedulerConfig::default(),
    };
    Ok(Request {
        width: args.width,
        height: args.height,
        steps: args.steps,
        seed: args.seed,
        cfg: args.cfg,
        caption,
        negative,
        scheduler,
        teacache: teacache_options(args)?,
        record_changes: false,
    })
}

fn teacache_options(args: &Args) -> Result<TeaCacheOptions, Box<dyn std::error::Error>> {
    let mode = args.teacache.mode();
    let threshold = args.threshold.unwrap_or_else(|| mode.default_threshold());
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(format!("--threshold must be a non-negative number, found {threshold}").into());
    }
    let coefficients = match (&args.coefficients, mode) {
        (Some(path), _) => Some(Coefficients::read(path)?),
        (None, Mode::Poly) => weights::teacache_coefficients(&args.model)?,
        (None, _) => None,
    };
    Ok(TeaCacheOptions {
        mode,
        threshold,
        warmup: args
            .warmup_steps
            .unwrap_or(if args.cfg > 0.0 { 3 } else { 1 }),
        rescale: 1.0,
        coefficients,
    })
}

fn teacache_report(options: &TeaCacheOptions) -> serde_json::Value {
    if options.mode == Mode::Off {
        return json!({ "mode": "off" });
    }
    json!({
        "mode": options.mode.name(),
        "threshold": options.threshold,
        "warmup_steps": options.warmup,
        "coefficients": options.coefficients.as_ref().map(|c| &c.coefficients),
    })
}

/// Tensor `name` of a caption file as `[1, L, D]`, if present.
fn read_caption(path: &Path, name: &str) -> Result<Option<Caption>, Box<dyn std::error::Error>> {
    let file = load_safetensors(path)?;
    let Some(feats) = file.tensors.get(name) else {
        return Ok(None);
    };
    let feats: Array = match feats.shape() {
        [_, _] => feats.expand_dims(0),
        [1, _, _] => feats.clone(),
        shape => {
            return Err(format!(
                "{}: `{name}` must be [L, cap_feat_dim] or [1, L, cap_feat_dim], found {shape:?}",
                path.display()
            )
            .into())
        }
    };
    if !feats.dtype().is_float() {
        return Err(format!(
            "{}: `{name}` must be floating point, found {}",
            path.display(),
            feats.dtype()
        )
        .into());
    }
    let len = feats.dim(1).unwrap_or(0);
    Ok(Some(Caption { feats, len }))
}
