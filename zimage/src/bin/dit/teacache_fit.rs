//! `dit teacache-fit`: fits TeaCache's polynomial for a model.

use std::path::PathBuf;

use dit::teacache::{fit_polynomial, polyval, Coefficients, TeaCacheOptions};
use dit::weights::{self, ModelSource};
use zimage::sampler::{self, Caption, Guidance, Noise, Request, MAX_STEPS};
use zimage::scheduler::SchedulerConfig;

use crate::{compute_dtype, model_source, transformer_source, CliResult, FloatDtype};

/// Degree of the fitted polynomial (the TeaCache paper's).
const DEGREE: usize = 4;
/// A bound so a mistyped count is an error rather than hours of sampling.
const MAX_RUNS: u64 = 1000;

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a checkpoint directory.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// Seeded sampling runs to collect pairs from (seeds 0..R).
    #[arg(long, default_value_t = 4)]
    runs: u64,
    /// Steps per run; several counts (`8,30`) run every seed at each, so the fit covers
    /// the input changes of each schedule.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    steps: Vec<usize>,
    /// Image width in pixels (a multiple of 16).
    #[arg(long, default_value_t = 256)]
    width: i32,
    /// Image height in pixels (a multiple of 16).
    #[arg(long, default_value_t = 256)]
    height: i32,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Where to write the coefficients (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// Samples `runs` seeded images computing every step, pairs each step's relative change
/// of the first main block's modulated input with the relative change of the model's
/// output, and fits `output change ≈ p(input change)` by least squares.
pub fn run(args: Args) -> CliResult {
    if !(1..=MAX_RUNS).contains(&args.runs)
        || args.steps.iter().any(|n| !(2..=MAX_STEPS).contains(n))
    {
        return Err(format!(
            "teacache-fit needs --runs between 1 and {MAX_RUNS} and --steps between 2 and \
             {MAX_STEPS}"
        )
        .into());
    }
    let source = transformer_source(&args.model)?;
    let loaded = weights::load(&source, compute_dtype(args.dtype)?)?;
    let model = &loaded.model;
    let scheduler = match &source {
        ModelSource::Dir(dir) => SchedulerConfig::for_model_dir(dir)?,
        ModelSource::Builtin(_) => SchedulerConfig::default(),
    };
    let dim = model.config.cap_feat_dim;
    let mut pairs = Vec::new();
    let runs: Vec<(u64, usize)> = (0..args.runs)
        .flat_map(|seed| args.steps.iter().map(move |&steps| (seed, steps)))
        .collect();
    for (i, &(seed, steps)) in runs.iter().enumerate() {
        let request = Request {
            width: args.width,
            height: args.height,
            steps,
            noise: Noise::Seeded(seed),
            guidance: Guidance::off(),
            caption: Caption::random(64, dim, seed.wrapping_add(1)),
            negative: Caption::random(64, dim, seed.wrapping_add(2)),
            scheduler: scheduler.clone(),
            teacache: TeaCacheOptions::measure_only(),
            record_changes: true,
        };
        let generation = sampler::generate(model, &request, |_, _| {})?;
        // A NaN change (a model producing NaN) must not poison the fit.
        let changes = generation.changes.unwrap_or_default();
        pairs.extend(
            changes
                .into_iter()
                .filter(|(x, y)| x.is_finite() && y.is_finite()),
        );
        eprintln!("run {}/{}: {} pairs", i + 1, runs.len(), pairs.len());
    }
    let coefficients = fit_polynomial(&pairs, DEGREE)?;
    let rms = (pairs
        .iter()
        .map(|&(x, y)| (polyval(&coefficients, x) - y).powi(2))
        .sum::<f64>()
        / pairs.len() as f64)
        .sqrt();
    let range = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let inputs = range(pairs.iter().map(|p| p.0).collect());
    let outputs = range(pairs.iter().map(|p| p.1).collect());
    let fitted = Coefficients {
        coefficients,
        model: args.model.to_string(),
        runs: runs.len(),
        steps: args.steps.clone(),
        pairs: pairs.len(),
        input_range: Some(inputs),
    };
    fitted.write(&args.out)?;
    println!(
        "fitted a degree-{DEGREE} polynomial to {} pairs (input change {:.4}..{:.4}, output \
         change {:.4}..{:.4}, RMS residual {rms:.4}): {:?}",
        pairs.len(),
        inputs.0,
        inputs.1,
        outputs.0,
        outputs.1,
        fitted.coefficients
    );
    println!("wrote {}", args.out.display());
    Ok(())
}
