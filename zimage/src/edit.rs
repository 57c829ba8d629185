//! Image to image and inpainting inputs, as diffusers' `ZImageImg2ImgPipeline` and
//! `ZImageInpaintPipeline` prepare them: the picture resized down to a multiple of 16
//! (`VaeImageProcessor`, Lanczos) and scaled to `[-1, 1]`, encoded by the VAE and drawn
//! from its posterior; the mask converted to grayscale as PIL does, binarized at 0.5 and
//! resized to the latents by nearest neighbour.
//!
//! diffusers' inpainting pipeline also encodes the masked picture, but its transformer has
//! no input for it: that encoding changes nothing and is not done here.

use std::path::Path;

use image::{ImageDecoder, ImageFormat};
use mlx::{random, Array, Dtype};
use vae::Tiling;

use crate::picture::Rgb8;
use crate::resample;
use crate::sampler::{self, InitImage, VAE_SCALE};
use crate::{Error, Pipeline, Result};

/// Picture sides are cut down to multiples of this ([`sampler::SIDE_MULTIPLE`]).
pub const SIDE_MULTIPLE: u32 = sampler::SIDE_MULTIPLE as u32;

/// How the picture's latents are drawn from the VAE's posterior: `mean + std · ε`, as
/// diffusers' pipelines sample it with their generator.
#[derive(Clone)]
pub enum LatentDraw {
    /// `ε` seeded.
    Seeded(u64),
    /// This `ε` `[1, C, h, w]` (a recorded draw).
    Given(Array),
}

/// Reads a PNG or JPEG picture as 8-bit RGB (grayscale is replicated, alpha dropped).
pub fn read_picture(path: &Path) -> Result<Rgb8> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    decode_picture(path, &bytes)
}

/// The most pixels an input picture may have: 4096x4096, 65,536 image tokens, sixteen
/// times the 1024x1024 Z-Image was trained at. The limit is checked on the file's header,
/// before decoding: a file of a few hundred bytes can claim a picture of gigabytes.
pub const MAX_PICTURE_PIXELS: u64 = 1 << 24;

/// Decodes a PNG or JPEG picture's bytes as [`read_picture`] does; errors name `path`, the
/// file they came from. Pictures of more than [`MAX_PICTURE_PIXELS`] are refused.
pub fn decode_picture(path: &Path, bytes: &[u8]) -> Result<Rgb8> {
    let not_a_picture = || Error::Input(format!("{}: not a PNG or JPEG picture", path.display()));
    let format = image::guess_format(bytes).map_err(|_| not_a_picture())?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(not_a_picture());
    }
    let failed = |e: image::ImageError| Error::Input(format!("{}: {e}", path.display()));
    let decoder = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_decoder()
        .map_err(failed)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PICTURE_PIXELS {
        return Err(Error::Input(format!(
            "{}: the picture is {width}x{height} pixels, more than the {MAX_PICTURE_PIXELS} \
             (4096x4096) an input picture may have; scale it down",
            path.display()
        )));
    }
    let decoded = image::DynamicImage::from_decoder(decoder)
        .map_err(failed)?
        .to_rgb8();
    Ok(Rgb8 {
        width: decoded.width(),
        height: decoded.height(),
        pixels: decoded.into_raw(),
    })
}

/// The picture cut down to multiples of [`SIDE_MULTIPLE`] on both sides, resized with PIL's
/// Lanczos filter bit for bit (diffusers' default resampling, see [`resample`]); unchanged
/// when it already fits.
pub fn fit_sides(picture: &Rgb8) -> Result<Rgb8> {
    let (width, height) = (
        picture.width - picture.width % SIDE_MULTIPLE,
        picture.height - picture.height % SIDE_MULTIPLE,
    );
    if width == 0 || height == 0 {
        return Err(Error::Input(format!(
            "a {}x{} picture is smaller than {SIDE_MULTIPLE} pixels on a side",
            picture.width, picture.height
        )));
    }
    check_pixels("picture", picture)?;
    if (width, height) == (picture.width, picture.height) {
        return Ok(picture.clone());
    }
    Ok(Rgb8 {
        width,
        height,
        pixels: resample::lanczos_rgb8(
            &picture.pixels,
            picture.width,
            picture.height,
            width,
            height,
        ),
    })
}

/// `what`'s pixels must be its width · height RGB triples, and its sides fit MLX's
/// `i32` shapes: `Rgb8`'s fields are public, so a caller can build one that is not.
fn check_pixels(what: &str, picture: &Rgb8) -> Result<()> {
    let sides_fit = i32::try_from(picture.width).is_ok() && i32::try_from(picture.height).is_ok();
    let expected = u64::from(picture.width) * u64::from(picture.height) * 3;
    if !sides_fit || picture.pixels.len() as u64 != expected {
        return Err(pixel_count_error(what, picture));
    }
    Ok(())
}

fn pixel_count_error(what: &str, picture: &Rgb8) -> Error {
    Error::Input(format!(
        "the {what} is {}x{} pixels but holds {} bytes, not width x height x 3",
        picture.width,
        picture.height,
        picture.pixels.len()
    ))
}

/// The picture as the VAE takes it: `[1, 3, H, W]` float32, `2·(v / 255) − 1`.
pub fn image_tensor(picture: &Rgb8) -> Result<Array> {
    check_pixels("picture", picture)?;
    let values: Vec<f32> = picture
        .pixels
        .iter()
        .map(|&v| 2.0 * (f32::from(v) / 255.0) - 1.0)
        .collect();
    let (h, w) = (picture.height as i32, picture.width as i32);
    Ok(Array::from_slice(&values, &[1, h, w, 3]).transpose(&[0, 3, 1, 2]))
}

/// PIL's grayscale of one pixel: `(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16`.
fn luma(rgb: &[u8]) -> u8 {
    let [r, g, b] = [rgb[0], rgb[1], rgb[2]].map(u32::from);
    // At most (65536 · 255 + 2¹⁵) >> 16 = 255.
    ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16) as u8
}

/// A mask picture as diffusers' mask processor prepares it before binarizing: grayscale
/// first (kept as three equal channels, whose grayscale is the value again), then cut and
/// resized as [`fit_sides`] does the picture.
pub fn fit_mask(mask: &Rgb8) -> Result<Rgb8> {
    check_pixels("mask", mask)?;
    let gray = Rgb8 {
        pixels: mask
            .pixels
            .chunks_exact(3)
            .flat_map(|rgb| [luma(rgb); 3])
            .collect(),
        ..mask.clone()
    };
    fit_sides(&gray)
}

/// A mask picture as `[1, 1, H, W]` float32 of 0 and 1: PIL's grayscale, 1 from 128 up
/// (`v / 255 ≥ 0.5`).
pub fn mask_tensor(mask: &Rgb8) -> Result<Array> {
    check_pixels("mask", mask)?;
    let values: Vec<f32> = mask
        .pixels
        .chunks_exact(3)
        .map(|rgb| {
            if f32::from(luma(rgb)) / 255.0 >= 0.5 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Ok(Array::from_slice(
        &values,
        &[1, 1, mask.height as i32, mask.width as i32],
    ))
}

/// A pixel mask `[1, 1, H, W]` from [`mask_tensor`] (sides multiples of [`VAE_SCALE`]) at
/// latent resolution `[1, 1, H/8, W/8]`, as `interpolate(mode="nearest")` makes it: the
/// top-left pixel of each 8x8 cell.
fn latent_mask(mask: &Array) -> Array {
    let [_, _, h, w] = mask.dims();
    let scale = VAE_SCALE;
    mask.reshape(&[1, 1, h / scale, scale, w / scale, scale])
        .slice_axis(3, 0, 1)
        .slice_axis(5, 0, 1)
        .reshape(&[1, 1, h / scale, w / scale])
}

/// An inpainting mask must be its picture's size (checked on the pictures as read, before
/// [`fit_sides`] would hide a difference, and again by [`init_image`]).
pub fn check_mask(picture: &Rgb8, mask: &Rgb8) -> Result<()> {
    if (mask.width, mask.height) != (picture.width, picture.height) {
        return Err(Error::Input(format!(
            "the mask is {}x{} pixels, the picture {}x{}: they must be the same size",
            mask.width, mask.height, picture.width, picture.height
        )));
    }
    Ok(())
}

/// The start of image to image (`mask: None`) or inpainting: `picture` (sides multiples of
/// [`SIDE_MULTIPLE`], see [`fit_sides`]) encoded by the pipeline's VAE, its latents drawn
/// as `draw` says and scaled for the transformer; `mask` must be the picture's size.
pub fn init_image(
    pipeline: &Pipeline,
    picture: &Rgb8,
    mask: Option<&Rgb8>,
    strength: f64,
    draw: LatentDraw,
    tiling: Tiling,
) -> Result<InitImage> {
    let (width, height) = (picture.width, picture.height);
    if width == 0 || height == 0 || width % SIDE_MULTIPLE != 0 || height % SIDE_MULTIPLE != 0 {
        return Err(Error::Input(format!(
            "a {width}x{height} picture: its sides must be positive multiples of \
             {SIDE_MULTIPLE} (see fit_sides)"
        )));
    }
    let image = image_tensor(picture)?;
    let mask = match mask {
        Some(mask) => {
            check_mask(picture, mask)?;
            Some(latent_mask(&mask_tensor(mask)?))
        }
        None => None,
    };
    let vae = pipeline.require_vae("encode pictures")?;
    let posterior = vae.encode_with(&image.astype(vae.dtype()), tiling)?;
    let z = match draw {
        LatentDraw::Seeded(seed) => {
            // Not the noise's key (`random::key(seed)`): the two draws are independent.
            let keys = random::split(&random::key(seed), 2);
            posterior.sample(&keys[1])
        }
        LatentDraw::Given(eps) => {
            if eps.shape() != posterior.mean.shape() {
                return Err(Error::Input(format!(
                    "the posterior draw (LatentDraw::Given) must be {:?}, the picture's latent \
                     shape, found {:?}",
                    posterior.mean.shape(),
                    eps.shape()
                )));
            }
            if !eps.dtype().is_float() {
                return Err(Error::Input(format!(
                    "the posterior draw (LatentDraw::Given) must be floating point, found {}",
                    eps.dtype()
                )));
            }
            &posterior.mean + posterior.std() * eps.astype(posterior.mean.dtype())
        }
    };
    Ok(InitImage {
        latents: vae.scale_latents(&z).astype(Dtype::F32),
        strength,
        mask,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_turn_gray_before_they_are_resized() {
        // 20x18 (cut to 16x16, so resized), colored: each pixel's three channels must come
        // out equal, the grayscale of a resized gray picture.
        let pixels: Vec<u8> = (0..20 * 18 * 3).map(|i| (i * 37 % 251) as u8).collect();
        let mask = Rgb8 {
            width: 20,
            height: 18,
            pixels,
        };
        let fitted = fit_mask(&mask).unwrap();
        assert_eq!((fitted.width, fitted.height), (16, 16));
        assert!(fitted
            .pixels
            .chunks_exact(3)
            .all(|p| p[0] == p[1] && p[1] == p[2]));
        assert_ne!(fitted, fit_sides(&mask).unwrap());
        assert!(fit_mask(&Rgb8 {
            pixels: vec![0; 5],
            ..mask
        })
        .is_err());
    }

    #[test]
    fn masks_take_pils_grayscale_and_the_top_left_pixel_of_each_cell() {
        // 16x8 pixels: one cell of 8x8 white (PIL luma 128), one black (127 and 113).
        let mut pixels = vec![0u8; 16 * 8 * 3];
        pixels[..3].copy_from_slice(&[127, 128, 128]);
        pixels[8 * 3..8 * 3 + 3].copy_from_slice(&[30, 170, 40]);
        let mask = Rgb8 {
            width: 16,
            height: 8,
            pixels,
        };
        let latent = latent_mask(&mask_tensor(&mask).unwrap());
        assert_eq!(latent.shape(), &[1, 1, 1, 2]);
        assert_eq!(latent.to_vec::<f32>().unwrap(), [1.0, 0.0]);
    }

    #[test]
    fn pictures_are_cut_down_to_multiples_of_16() {
        let picture = Rgb8 {
            width: 37,
            height: 20,
            pixels: vec![200; 37 * 20 * 3],
        };
        let fitted = fit_sides(&picture).unwrap();
        assert_eq!((fitted.width, fitted.height), (32, 16));
        // A flat picture stays flat through the filter.
        assert!(fitted.pixels.iter().all(|&v| v == 200));
        let tiny = Rgb8 {
            width: 15,
            height: 40,
            pixels: vec![0; 15 * 40 * 3],
        };
        assert!(fit_sides(&tiny).is_err());
    }
}
