//! Soak benchmark: does a long-running process stay flat?
//!
//! 1. 1,000 generations through one loaded `tiny` pipeline, each as `dit generate` draws
//!    it (the text encoder loaded for the prompts and dropped, 2 denoising steps, VAE
//!    decoding, PNG encoding), cycling 5 prompts, 5 picture sizes and guidance on and off,
//!    with a new seed each time; then the pipeline is dropped;
//! 2. 10,000 calls of an `#[mlx::graph]` function cycling 50 values of a static argument
//!    (under the 64 keys at which a graph cache warns) and 5 input shapes, on new inputs
//!    each call.
//!
//! Every 50 generations (500 calls) it prints active memory, cache memory, the live
//! `Array` handles of the process ([`mlx::memory::live_arrays`]), the arrays step loops
//! track, the trace count, and the resident memory of the process (shown, not judged: the
//! C allocator makes it noisy). Each workload repeats with a period that divides the
//! interval, so every sample sees the same point of its cycle. The verdict: every sample
//! after warm-up (100 generations, 1,000 calls) matches the one that ends warm-up: live
//! and tracked arrays and traces exactly, active memory within 64 KiB, cache memory within
//! 1 MiB; dropping the pipeline leaves as many live arrays as before loading it; no
//! warning is logged. It exits 1 otherwise.
//!
//! ```text
//! cargo run --release -p zimage --example soak -- [generations] [calls]
//! ```
//!
//! MLX compiles the fused CPU kernels of compiled graphs with the system compiler and
//! keeps them under `/tmp/mlx`: the first run on a machine spends most of its warm-up
//! there (about 2 minutes for the 250 kernels of part 2), later runs reuse them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dit::weights::ModelSource;
use mlx::memory::{active_memory, cache_memory, live_arrays};
use mlx::{random, Array, Dtype};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use zimage::pipeline::LoadOptions;
use zimage::sampler::{self, Caption, Guidance, Noise, Request};
use zimage::{picture, Pipeline};

const GEN_INTERVAL: usize = 50;
const GEN_WARMUP: usize = 100;
const CALL_INTERVAL: usize = 500;
const CALL_WARMUP: usize = 1000;
/// Static values of the graph function: under `mlx::graph`'s 64-key warning.
const STATICS: usize = 50;
const ROWS: [i32; 5] = [8, 16, 24, 32, 48];
const ACTIVE_TOLERANCE: usize = 64 << 10;
const CACHE_TOLERANCE: usize = 1 << 20;

const PROMPTS: [&str; 5] = [
    "a cat",
    "a lighthouse on a cliff at dusk, oil painting",
    "an astronaut riding a horse across a desert of red sand under two moons",
    "macro photograph of a dew drop on a spider web",
    "a busy night market in the rain, neon signs reflected in puddles, cinematic, 35mm",
];
const SIZES: [(i32, i32); 5] = [(64, 64), (80, 64), (64, 80), (48, 48), (96, 64)];

/// One reading of the process's memory.
struct Sample {
    done: usize,
    seconds: f64,
    active: usize,
    cache: usize,
    arrays: usize,
    tracked: usize,
    traces: u64,
    /// The process's resident memory (Linux; 0 elsewhere): reported, not judged, since
    /// the C allocator's arenas make it noisy.
    rss: usize,
}

/// Resident bytes of this process, from `/proc/self/statm` (0 where there is none).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

impl Sample {
    fn take(done: usize, started: Instant) -> mlx::Result<Sample> {
        mlx::synchronize()?;
        Ok(Sample {
            done,
            seconds: started.elapsed().as_secs_f64(),
            active: active_memory(),
            cache: cache_memory(),
            arrays: live_arrays(),
            tracked: mlx::scope::live_report(0).count,
            traces: mlx::compile::trace_count(),
            rss: resident_bytes(),
        })
    }
}

/// Prints the samples as a table and returns what is not flat after `warmup`.
fn verdict(what: &str, samples: &[Sample], warmup: usize) -> Vec<String> {
    println!(
        "{what:>11} {:>7} {:>8} {:>11} {:>10} {:>7} {:>7} {:>6} {:>8}",
        "time s", "ms each", "active KiB", "cache KiB", "arrays", "tracked", "traces", "RSS MiB"
    );
    let mut last = (0, 0.0);
    for s in samples {
        let each = 1e3 * (s.seconds - last.1) / (s.done - last.0).max(1) as f64;
        println!(
            "{:>11} {:>7.1} {each:>8.2} {:>11.1} {:>10.1} {:>7} {:>7} {:>6} {:>8.1}",
            s.done,
            s.seconds,
            s.active as f64 / 1024.0,
            s.cache as f64 / 1024.0,
            s.arrays,
            s.tracked,
            s.traces,
            s.rss as f64 / (1 << 20) as f64
        );
        last = (s.done, s.seconds);
    }
    let Some(reference) = samples.iter().find(|s| s.done == warmup) else {
        return vec![format!(
            "{what}: no sample at the end of warm-up ({warmup})"
        )];
    };
    let mut problems = Vec::new();
    for s in samples.iter().filter(|s| s.done > warmup) {
        // (what, now, after warm-up, how far apart they may be)
        let measures = [
            ("active bytes", s.active, reference.active, ACTIVE_TOLERANCE),
            ("cache bytes", s.cache, reference.cache, CACHE_TOLERANCE),
            ("live arrays", s.arrays, reference.arrays, 0),
            ("tracked arrays", s.tracked, reference.tracked, 0),
            ("traces", s.traces as usize, reference.traces as usize, 0),
        ];
        for (name, now, then, tolerance) in measures {
            if now.abs_diff(then) > tolerance {
                problems.push(format!(
                    "{what} {}: {name} {now}, after warm-up {then}",
                    s.done
                ));
            }
        }
    }
    problems
}

/// One generation as `dit generate` draws it, to PNG bytes; the `i`th of the cycle.
fn generate(pipeline: &Pipeline, i: usize) -> Result<usize, Box<dyn std::error::Error>> {
    let prompt = PROMPTS[i % PROMPTS.len()];
    let (width, height) = SIZES[(i / PROMPTS.len()) % SIZES.len()];
    let guided = (i / (PROMPTS.len() * SIZES.len())) % 2 == 1;
    let mut prompts = vec![prompt];
    if guided {
        prompts.push("blurry, low quality");
    }
    let embeds = pipeline.encode_prompts(&prompts, 512)?;
    let caption = Caption::from_embeds(&embeds[0].embeds);
    let negative = embeds
        .get(1)
        .map_or_else(|| caption.clone(), |e| Caption::from_embeds(&e.embeds));
    drop(embeds);
    let request = Request {
        width,
        height,
        steps: 2,
        noise: Noise::Seeded(i as u64),
        guidance: Guidance {
            scale: if guided { 4.0 } else { 0.0 },
            ..Guidance::off()
        },
        caption,
        negative,
        scheduler: pipeline.scheduler.clone(),
        teacache: dit::teacache::TeaCacheOptions::off(),
        record_changes: false,
    };
    let generation = sampler::generate(pipeline.transformer(), &request, |_, _| {})?;
    let image = pipeline.decode(&generation.latents, vae::Tiling::Auto)?;
    drop(generation);
    let mut bytes = 0;
    for rgb in picture::to_rgb8(&image)? {
        bytes += picture::png_bytes(&rgb, &[("seed", i.to_string())])?.len();
    }
    Ok(bytes)
}

/// The compiled graph of the second part: `k` is static (a key of the graph's cache) and
/// the rows of `x` vary (one MLX trace per shape under each key).
#[mlx::graph]
fn layer(x: &Array, w: &Array, b: &Array, k: i32) -> Array {
    let scale = 1.0 + f64::from(k) / STATICS as f64;
    let h = (x.matmul(w) * scale + b).tanh();
    (&h * &h).sum(-1, false) + f64::from(k)
}

/// Counts warnings and errors logged (a graph cache's 64-key warning among them).
struct CountWarnings(Arc<AtomicUsize>);

impl<S: tracing::Subscriber> Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let generations: usize = args.first().map_or(Ok(1000), |s| s.parse())?;
    let calls: usize = args.get(1).map_or(Ok(10_000), |s| s.parse())?;
    let warnings = Arc::new(AtomicUsize::new(0));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(CountWarnings(Arc::clone(&warnings)))
        .init();
    let mut problems = Vec::new();

    // 1. Generations through one loaded pipeline.
    let started = Instant::now();
    let before = Sample::take(0, started)?;
    let pipeline = Pipeline::load(&ModelSource::parse("tiny"), LoadOptions::from(Dtype::F32))?;
    let loaded = Sample::take(0, started)?;
    println!(
        "tiny pipeline loaded in {:.2} s: weights {:.1} KiB, active {:.1} KiB, {} live arrays",
        loaded.seconds,
        pipeline.weights_bytes() as f64 / 1024.0,
        loaded.active as f64 / 1024.0,
        loaded.arrays
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut png_bytes = 0;
    for i in 0..generations {
        png_bytes += generate(&pipeline, i)?;
        if (i + 1) % GEN_INTERVAL == 0 {
            samples.push(Sample::take(i + 1, started)?);
        }
    }
    problems.extend(verdict("generations", &samples, GEN_WARMUP));
    println!("({png_bytes} bytes of PNG)");
    drop(pipeline);
    let dropped = Sample::take(generations, started)?;
    println!(
        "pipeline dropped: active {:.1} KiB, {} live arrays (before loading: {:.1} KiB, {})\n",
        dropped.active as f64 / 1024.0,
        dropped.arrays,
        before.active as f64 / 1024.0,
        before.arrays
    );
    if dropped.arrays != before.arrays {
        problems.push(format!(
            "{} live arrays after dropping the pipeline, {} before loading it",
            dropped.arrays, before.arrays
        ));
    }

    // 2. Compiled graph calls with changing statics and shapes.
    let w = random::normal(&[64, 64], Dtype::F32, &random::key(1));
    let b = random::normal(&[64], Dtype::F32, &random::key(2));
    mlx::eval([&w, &b])?;
    let traces_before = mlx::compile::trace_count();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut checksum = 0.0f64;
    for i in 0..calls {
        let k = (i % STATICS) as i32;
        let rows = ROWS[(i / STATICS) % ROWS.len()];
        let x = random::normal(&[rows, 64], Dtype::F32, &random::key(i as u64));
        let y = layer(&x, &w, &b, k);
        checksum += f64::from(y.sum(mlx::ALL, false).item::<f32>()?);
        drop((x, y));
        if (i + 1) % CALL_INTERVAL == 0 {
            let mut sample = Sample::take(i + 1, started)?;
            sample.traces -= traces_before;
            samples.push(sample);
        }
    }
    problems.extend(verdict("calls", &samples, CALL_WARMUP));
    // Warm-up covers the whole cycle: one trace per static value and shape.
    let expected = (STATICS * ROWS.len()) as u64;
    println!(
        "({STATICS} static values x {} shapes; checksum {checksum:.6e})",
        ROWS.len()
    );
    match samples.last() {
        Some(last) if last.traces != expected => {
            problems.push(format!(
                "calls: {} traces, {expected} expected",
                last.traces
            ));
        }
        _ => {}
    }

    let warned = warnings.load(Ordering::Relaxed);
    if warned > 0 {
        problems.push(format!("{warned} warnings logged"));
    }
    if problems.is_empty() {
        println!(
            "flat: every sample after warm-up within {} KiB active and {} KiB cache of the \
             one ending warm-up, with the same live and tracked arrays and traces; no warnings",
            ACTIVE_TOLERANCE >> 10,
            CACHE_TOLERANCE >> 10
        );
        Ok(())
    } else {
        println!("NOT FLAT:");
        for problem in &problems {
            println!("  {problem}");
        }
        std::process::exit(1);
    }
}
