//! A PNG preview of latents, for transformer checkpoints that come without a VAE: the
//! first three channels, each normalized to its own range, upscaled by the VAE factor so
//! the image has the requested pixel size.

use std::path::Path;

use mlx::{Array, Dtype};

use crate::picture::{self, Rgb8};
use crate::sampler::VAE_SCALE;
use crate::{Error, Result};

/// Writes `latents: [1, C, h, w]` as an RGB PNG of `(w·8) × (h·8)` pixels. With fewer than
/// three channels the last one is repeated.
pub fn write_png(latents: &Array, path: &Path) -> Result<()> {
    let shape = latents.shape();
    if shape.len() != 4 || shape[0] != 1 || shape[1] < 1 {
        return Err(Error::Input(format!(
            "a preview needs latents of shape [1, C, h, w], found {shape:?}"
        )));
    }
    let (channels, h, w) = (shape[1], shape[2] as usize, shape[3] as usize);
    let values = latents.astype(Dtype::F32).to_vec::<f32>()?;
    let plane = h * w;
    let planes: Vec<Vec<u8>> = (0..3)
        .map(|c| {
            let c = c.min(channels - 1) as usize;
            normalize(&values[c * plane..(c + 1) * plane])
        })
        .collect();
    let scale = VAE_SCALE as usize;
    let (width, height) = (w * scale, h * scale);
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let i = (y / scale) * w + x / scale;
            rgb.extend(planes.iter().map(|p| p[i]));
        }
    }
    let picture = Rgb8 {
        width: width as u32,
        height: height as u32,
        pixels: rgb,
    };
    picture::write_png(path, &picture, &[])
}

/// Maps a channel's range to 0..=255 (a constant channel to mid-grey).
fn normalize(values: &[f32]) -> Vec<u8> {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    let range = hi - lo;
    values
        .iter()
        .map(|&v| {
            if range.is_nan() || range <= 0.0 || !v.is_finite() {
                128
            } else {
                ((v - lo) / range * 255.0).round() as u8
            }
        })
        .collect()
}
