//! TeaCache's trade-off on a built-in model: for naive and poly at several thresholds,
//! the fraction of transformer (main-block) passes skipped, the final latents' relative L1
//! error against no caching, and the time per step, all in one process.
//!
//! ```text
//! cargo run --release -p zimage --example bench_teacache -- [tiny|small] [steps] [coefficients.json]
//! ```
//!
//! Poly uses the model's shipped coefficients unless a file from
//! `dit teacache-fit --steps <steps>` is given.

use std::time::Instant;

use dit::teacache::{Coefficients, Mode, TeaCacheOptions};
use dit::weights::{self, ModelSource};
use mlx::Dtype;
use zimage::sampler::{self, Caption, Generation, Guidance, Noise, Request};
use zimage::scheduler::SchedulerConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let source = ModelSource::parse(args.first().map_or("small", String::as_str));
    let steps: usize = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let model = weights::load(&source, Dtype::F32)?.model;
    let coefficients = match args.get(2) {
        Some(path) => Some(Coefficients::read(std::path::Path::new(path))?),
        None => weights::teacache_coefficients(&source)?,
    };
    let dim = model.config.cap_feat_dim;
    let request = |seed: u64, teacache: TeaCacheOptions| Request {
        width: 256,
        height: 256,
        steps,
        noise: Noise::Seeded(seed),
        guidance: Guidance::off(),
        caption: Caption::random(64, dim, seed + 1),
        negative: Caption::random(64, dim, seed + 2),
        scheduler: SchedulerConfig::default(),
        teacache,
        record_changes: false,
    };
    let run = |seed, teacache| -> Result<(Generation, f64), Box<dyn std::error::Error>> {
        let started = Instant::now();
        let generation = sampler::generate(&model, &request(seed, teacache), |_, _| {})?;
        generation.latents.eval()?;
        let ms = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
        Ok((generation, ms))
    };
    let seeds = [100, 101];
    // Warm up MLX's kernel cache so the first measured run is not the slowest.
    run(seeds[0], TeaCacheOptions::off())?;
    let reference: Vec<(Generation, f64)> = seeds
        .iter()
        .map(|&s| run(s, TeaCacheOptions::off()))
        .collect::<Result<_, _>>()?;
    let off_ms = reference.iter().map(|r| r.1).sum::<f64>() / seeds.len() as f64;
    println!("{source}, {steps} steps, 256x256, seeds {seeds:?} (not the fit's 0..4)");
    println!("mode   threshold  skipped  latent rel. L1  ms/step (off: {off_ms:.0})");
    let settings = [
        (Mode::Naive, [0.05, 0.1, 0.2, 0.3]),
        (Mode::Poly, [0.15, 0.3, 0.45, 0.6]),
    ];
    for (mode, thresholds) in settings {
        for threshold in thresholds {
            let mut skipped = 0.0;
            let mut error = 0.0;
            let mut ms = 0.0;
            for (&seed, (off, _)) in seeds.iter().zip(&reference) {
                let options = TeaCacheOptions {
                    mode,
                    threshold,
                    warmup: 1,
                    rescale: 1.0,
                    coefficients: coefficients.clone(),
                };
                let (cached, step_ms) = run(seed, options)?;
                skipped += cached.cache_hits() as f64 / steps as f64;
                error += relative_l1(&cached, off)?;
                ms += step_ms;
            }
            let n = seeds.len() as f64;
            println!(
                "{:<6} {threshold:>9}  {:>6.1}%  {:>13.2}%  {:>7.0}",
                mode.name(),
                100.0 * skipped / n,
                100.0 * error / n,
                ms / n
            );
        }
    }
    Ok(())
}

fn relative_l1(a: &Generation, b: &Generation) -> mlx::Result<f64> {
    let (a, b) = (a.latents.to_vec::<f32>()?, b.latents.to_vec::<f32>()?);
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum();
    Ok(diff / b.iter().map(|y| f64::from(y.abs())).sum::<f64>())
}
