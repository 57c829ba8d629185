//! Time and peak memory of decoding (and encoding) with a built-in autoencoder.
//!
//! ```sh
//! cargo run --release -p vae --example bench_vae -- [tiny|small] [--encode] [SIZE TILING TILE]
//! ```
//!
//! With `SIZE TILING TILE` (say `512 off 512`) one case; else a table. `MLX_RS_EAGER=1`
//! runs the graphs uncompiled.
//!
//! For each case: the first call (tracing and compiling the graphs included), the best of
//! the next runs, and the peak memory above the weights.

use std::time::Instant;

use mlx::{random, Dtype};
use vae::{AutoencoderKL, Tiling, VaeConfig};

/// User plus system CPU seconds of this process (Linux; zero elsewhere): steadier than
/// wall time on a machine shared with other work.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> vae::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.first().map(String::as_str) {
        Some("tiny") => VaeConfig::tiny(),
        _ => VaeConfig::small(),
    };
    let encode = args.iter().any(|a| a == "--encode");
    println!(
        "{:?}, blocks {:?}",
        mlx::build_info().blas,
        config.block_out_channels
    );
    let mut vae = AutoencoderKL::random(&config, vae::weights::BUILTIN_SEED, Dtype::F32)?;
    let mut cases = vec![
        (256, Tiling::Off, 512),
        (512, Tiling::Off, 512),
        (512, Tiling::On, 512),
        (512, Tiling::Auto, 256),
        (1024, Tiling::Auto, 512),
    ];
    let numbers: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .skip(1)
        .collect();
    if let [size, tiling, tile] = numbers[..] {
        let tiling = match tiling.as_str() {
            "on" => Tiling::On,
            "auto" => Tiling::Auto,
            _ => Tiling::Off,
        };
        cases = vec![(
            size.parse().unwrap_or(512),
            tiling,
            tile.parse().unwrap_or(512),
        )];
    }
    for (size, tiling, tile) in cases {
        vae.config.sample_size = tile;
        let scale = config.pixels_per_latent();
        let run = || -> vae::Result<()> {
            if encode {
                let image =
                    random::uniform(-1.0, 1.0, &[1, 3, size, size], Dtype::F32, &random::key(1));
                vae.encode_with(&image, tiling)?.mean.eval()?;
            } else {
                let z = random::normal(
                    &[1, 16, size / scale, size / scale],
                    Dtype::F32,
                    &random::key(1),
                );
                vae.decode_with(&z, tiling)?.eval()?;
            }
            Ok(())
        };
        mlx::memory::clear_cache()?;
        let base = mlx::memory::active_memory();
        mlx::memory::reset_peak_memory()?;
        let start = Instant::now();
        run()?;
        let first = start.elapsed().as_secs_f64();
        let peak = mlx::memory::peak_memory().saturating_sub(base);
        let (mut best, mut best_cpu) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..2 {
            let (start, cpu) = (Instant::now(), cpu_seconds());
            run()?;
            best = best.min(start.elapsed().as_secs_f64());
            best_cpu = best_cpu.min(cpu_seconds() - cpu);
        }
        println!(
            "{} {size}x{size} tiling {tiling:?} (tile {tile}): first {first:.2} s, then {best:.2} s \
             ({best_cpu:.2} CPU s), peak {:.0} MiB",
            if encode { "encode" } else { "decode" },
            peak as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
