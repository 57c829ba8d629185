//! Tiled decoding bounds peak memory: each tile's graph is evaluated before the next is
//! built. Alone in its test binary, because MLX's peak-memory counter is process-wide.

use mlx::{memory, random, Array, Dtype};
use vae::{AutoencoderKL, Tiling, VaeConfig};

/// Peak bytes above what was allocated before, decoding `z` as `tiling` says.
fn peak_decoding(vae: &AutoencoderKL, z: &Array, tiling: Tiling) -> (usize, Array) {
    memory::clear_cache().unwrap();
    let base = memory::active_memory();
    memory::reset_peak_memory().unwrap();
    let out = vae.decode_with(z, tiling).unwrap();
    out.eval().unwrap();
    (memory::peak_memory().saturating_sub(base), out)
}

#[test]
fn tiled_decoding_of_a_latent_four_tiles_wide_takes_at_most_half_the_peak() {
    // Tiles of 8 latents (64 pixels); the latent is 32x32, four tiles each way.
    let config = VaeConfig {
        sample_size: 64,
        ..VaeConfig::tiny()
    };
    let vae = AutoencoderKL::random(&config, 1, Dtype::F32).unwrap();
    assert_eq!(vae.config.tile_latent_size(), 8);
    let z = random::normal(&[1, 16, 32, 32], Dtype::F32, &random::key(2));
    z.eval().unwrap();
    // Trace and compile both paths first: the compile cache is not what is measured.
    peak_decoding(&vae, &z, Tiling::Off);
    peak_decoding(&vae, &z, Tiling::Auto);

    let (untiled, whole) = peak_decoding(&vae, &z, Tiling::Off);
    let (tiled, tiles) = peak_decoding(&vae, &z, Tiling::Auto);
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "decoding [1, 16, 32, 32] to 256x256 with tiles of 8 latents: peak {:.1} MiB untiled, \
         {:.1} MiB tiled ({:.0}%)",
        mib(untiled),
        mib(tiled),
        100.0 * tiled as f64 / untiled as f64
    );
    assert_eq!(whole.shape(), &[1, 3, 256, 256]);
    assert_eq!(tiles.shape(), whole.shape());
    assert!(
        2 * tiled <= untiled,
        "tiled peak {tiled} bytes is more than half the untiled {untiled}"
    );
}
