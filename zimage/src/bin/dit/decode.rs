//! `dit decode`: latents to a picture through the pipeline's VAE.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use dit::weights::ModelSource;
use mlx::io::save_safetensors;
use mlx::{memory, Dtype};
use zimage::picture::{self, batch_paths};
use zimage::pipeline;

use crate::generate::read_latents;
use crate::{compute_dtype, mib, model_source, CliResult, FloatDtype, TilingArg};

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a diffusers pipeline folder.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// A safetensors file with tensor `latents` [B, 16, h, w], as the transformer
    /// produces them (before the VAE's scaling and shift).
    #[arg(long)]
    latents: PathBuf,
    /// Tiled decoding: auto tiles latents larger than the VAE's tile.
    #[arg(long, value_enum, default_value = "auto")]
    vae_tiling: TilingArg,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Write the picture (a batch: NAME-0.png, NAME-1.png, ...).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the decoder's raw output as tensor `image` [B, 3, H, W] float32.
    #[arg(long)]
    save_image: Option<PathBuf>,
}

pub fn run(args: Args) -> CliResult {
    let vae = pipeline::load_vae(&args.model, compute_dtype(args.dtype)?)?;
    let latents = read_latents(&args.latents, vae.config.latent_channels)?;
    memory::reset_peak_memory()?;
    let started = Instant::now();
    let image = vae.decode_latents_with(&latents, args.vae_tiling.tiling())?;
    image.check()?;
    let pictures = picture::to_rgb8(&image)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let peak = memory::peak_memory();
    if let Some(path) = &args.out {
        let text = [("model", args.model.to_string())];
        for (picture, path) in pictures.iter().zip(batch_paths(path, pictures.len())) {
            picture::write_png(&path, picture, &text)?;
            println!("wrote {}", path.display());
        }
    }
    if let Some(path) = &args.save_image {
        save_safetensors(
            path,
            [("image", &image.astype(Dtype::F32))],
            &BTreeMap::new(),
        )?;
        println!("wrote {}", path.display());
    }
    println!(
        "decoded {:?} to {:?} in {ms:.0} ms, peak {:.1} MiB",
        latents.shape(),
        image.shape(),
        mib(peak)
    );
    Ok(())
}
