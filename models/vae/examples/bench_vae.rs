//! Time and peak memory of decoding (and encoding) with a built-in autoencoder.
//!
//! ```sh
//! cargo run --release -p vae --example bench_vae -- [tiny|small] [--encode]
//! ```
//!
//! For each case: the first call (tracing and compiling the graphs included), the best of
//! the next runs, and the peak memory above the weights.

use std::time::Instant;

use mlx::{random, Dtype};
use vae::{AutoencoderKL, Tiling, VaeConfig};

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
    let cases = [
        (256, Tiling::Off, 512),
        (512, Tiling::Off, 512),
        (512, Tiling::On, 512),
        (512, Tiling::Auto, 256),
        (1024, Tiling::Auto, 512),
    ];
    for (size, tiling, tile) in cases {
        vae.config.sample_size = tile;
        let scale = config.scale();
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
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let start = Instant::now();
            run()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{} {size}x{size} tiling {tiling:?} (tile {tile}): first {first:.2} s, then {best:.2} s, peak {:.0} MiB",
            if encode { "encode" } else { "decode" },
            peak as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
