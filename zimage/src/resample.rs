//! Pillow's Lanczos resize of 8-bit RGB pictures, bit for bit: a port of
//! `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleInner`), what `Image.resize((w, h), Image.LANCZOS)` runs.
//!
//! diffusers' `VaeImageProcessor.resize` prepares image to image and inpainting inputs with
//! that call, so matching it exactly keeps our VAE inputs identical to diffusers'. A close
//! Lanczos (the `image` crate's) differs by up to 14 levels: PIL rounds its weights to fixed
//! point, windows and crops its kernel at the borders its own way.
//!
//! The algorithm: each output pixel along an axis is a weighted sum of the input pixels
//! within the filter's support around its centre (`sinc(x) · sinc(x / 3)` on `[-3, 3)`,
//! stretched by the scale when downsampling), the weights normalized to sum to 1 and
//! rounded to fixed point with 22 fractional bits. The horizontal pass runs first, on just
//! the input rows that the vertical pass reads, except where the height loses more than
//! twice as many pixels as the width: there Pillow 13 (python-pillow/Pillow#9549; earlier
//! versions never did) runs the vertical pass first. Sums are rounded half up and clipped
//! to `0..=255` after each pass, so the order shows in the result.
//!
//! Checked against Pillow 13.0.0 byte for byte on random pictures of a few hundred sizes
//! (up, down and mixed on either axis); `tests/edit.rs` keeps a few of them.

use std::ops::Range;

/// Fractional bits of the fixed-point weights: `32 - 8 - 2`, leaving room in an `i32` for
/// 8-bit values and weights that overshoot 1.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The Lanczos filter's support (`a = 3`).
const SUPPORT: f64 = 3.0;

/// One output pixel's taps along an axis: the first input pixel and the fixed-point weights
/// of it and the ones after it.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) {
        sinc(x) * sinc(x / SUPPORT)
    } else {
        0.0
    }
}

/// `precompute_coeffs` over the whole axis (box `0..in_size`) and `normalize_coeffs_8bpc`.
fn taps(in_size: u32, out_size: u32) -> Vec<Taps> {
    // PIL's box is `float`: `in1 - in0` is computed in single precision.
    let scale = f64::from(in_size as f32) / f64::from(out_size);
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    let ss = 1.0 / filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (f64::from(xx) + 0.5) * scale;
            // C's `(int)` casts: truncation toward zero, as `as` does.
            let min = ((center - support + 0.5) as i64).max(0);
            let max = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let raw: Vec<f64> = (min..max)
                .map(|x| lanczos((x as f64 - center + 0.5) * ss))
                .collect();
            let total = raw.iter().fold(0.0, |sum, w| sum + w);
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    // Rounded half away from zero, then truncated (C's `(int)`).
                    (if w < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps {
                first: min as usize,
                weights,
            }
        })
        .collect()
}

/// A rounded fixed-point sum as an 8-bit value (`clip8`).
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The weighted sum of `weights` applied to the values `at(0)`, `at(1)`, ..., rounded.
fn convolve(weights: &[i32], at: impl Fn(usize) -> u8) -> u8 {
    let half = 1i64 << (PRECISION_BITS - 1);
    let sum = weights
        .iter()
        .enumerate()
        .fold(half, |sum, (i, &w)| sum + i64::from(at(i)) * i64::from(w));
    clip8(sum)
}

/// `pixels` (`width · height` RGB triples, row by row) resized to `out_width x out_height`
/// as PIL's `Image.resize((out_width, out_height), Image.LANCZOS)` resizes them. Empty sides
/// give an empty picture or, from an empty input, a black one.
pub fn lanczos_rgb8(
    pixels: &[u8],
    width: u32,
    height: u32,
    out_width: u32,
    out_height: u32,
) -> Vec<u8> {
    let (w, out_w) = (width as usize, out_width as usize);
    let horizontal = taps(width, out_width);
    let vertical = taps(height, out_height);
    let (need_horizontal, need_vertical) = (out_width != width, out_height != height);
    // Vertical pass first where the height loses more than twice the width's pixels.
    let shrink = |from: u32, to: u32| i64::from(from) - i64::from(to);
    if out_height < height && shrink(height, out_height) > 2 * shrink(width, out_width) {
        let image = vertical_pass(pixels, w, &vertical, 0);
        return if need_horizontal {
            horizontal_pass(&image, w, 0..vertical.len(), &horizontal)
        } else {
            image
        };
    }
    if !need_horizontal {
        return if need_vertical {
            vertical_pass(pixels, w, &vertical, 0)
        } else {
            pixels.to_vec()
        };
    }
    // Only the input rows that the vertical pass reads (ybox_first..ybox_last).
    let first = vertical.first().map_or(0, |t| t.first);
    let last = vertical
        .last()
        .map_or(0, |t| t.first + t.weights.len())
        .max(first);
    let image = horizontal_pass(pixels, w, first..last, &horizontal);
    if need_vertical {
        vertical_pass(&image, out_w, &vertical, first)
    } else {
        image
    }
}

/// Value `c` of pixel `(x, y)` of a picture `width` pixels wide (0 past its end).
fn value(image: &[u8], width: usize, x: usize, y: usize, c: usize) -> u8 {
    image.get((y * width + x) * 3 + c).copied().unwrap_or(0)
}

/// The rows `rows` of `image` (`width` pixels wide), each resampled to `taps.len()` pixels.
fn horizontal_pass(image: &[u8], width: usize, rows: Range<usize>, taps: &[Taps]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * taps.len() * 3);
    for y in rows {
        for t in taps {
            for c in 0..3 {
                out.push(convolve(&t.weights, |i| {
                    value(image, width, t.first + i, y, c)
                }));
            }
        }
    }
    out
}

/// `image` (`width` pixels wide, its first row being input row `row_offset`) resampled to
/// `taps.len()` rows.
fn vertical_pass(image: &[u8], width: usize, taps: &[Taps], row_offset: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(width * taps.len() * 3);
    for t in taps {
        let first = t.first.saturating_sub(row_offset);
        for x in 0..width {
            for c in 0..3 {
                out.push(convolve(&t.weights, |i| {
                    value(image, width, x, first + i, c)
                }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sides_give_empty_or_black_pictures() {
        assert!(lanczos_rgb8(&[7; 12], 2, 2, 0, 3).is_empty());
        assert!(lanczos_rgb8(&[7; 12], 2, 2, 3, 0).is_empty());
        assert_eq!(lanczos_rgb8(&[], 0, 0, 2, 1), [0; 6]);
        assert_eq!(lanczos_rgb8(&[], 0, 5, 1, 2), [0; 6]);
    }

    #[test]
    fn flat_pictures_stay_flat_both_ways() {
        for (width, height) in [(5, 40), (40, 5), (3, 3), (1, 1)] {
            let out = lanczos_rgb8(&[93; 9 * 13 * 3], 9, 13, width, height);
            assert_eq!(out, vec![93; (width * height * 3) as usize]);
        }
    }
}
