//! Decoded pictures: the VAE's output to 8-bit RGB as diffusers' image processor makes it,
//! and PNG files that carry how they were made.

use std::path::Path;

use mlx::{Array, Dtype};

use crate::{Error, Result};

/// One 8-bit RGB picture, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// The VAE decoder's output `[B, 3, H, W]` as pictures: `(x / 2 + 1/2)` clamped to
/// `[0, 1]`, times 255, rounded, in float32 (diffusers' `postprocess` to `np`, then PIL).
pub fn to_rgb8(image: &Array) -> Result<Vec<Rgb8>> {
    let shape = image.shape();
    if shape.len() != 4 || shape[1] != 3 {
        return Err(Error::Input(format!(
            "a decoded image must be [B, 3, H, W], found {shape:?}"
        )));
    }
    // Clamping would turn NaN into a black picture and say nothing.
    if !image.all_finite()? {
        return Err(Error::NonFinite {
            what: "the decoded image".into(),
            dtype: image.dtype(),
        });
    }
    let [batch, _, h, w] = image.dims();
    let bytes = ((image.astype(Dtype::F32) / 2.0 + 0.5).clip(0.0, 1.0) * 255.0)
        .round()
        .astype(Dtype::U8)
        .transpose(&[0, 2, 3, 1])
        .to_vec::<u8>()?;
    let per_image = (h * w * 3) as usize;
    Ok((0..batch as usize)
        .map(|i| Rgb8 {
            width: w as u32,
            height: h as u32,
            pixels: bytes[i * per_image..(i + 1) * per_image].to_vec(),
        })
        .collect())
}

/// How a picture was made, as image generators record it in their PNGs.
#[derive(Clone, Debug)]
pub struct Parameters {
    pub prompt: Option<String>,
    pub negative_prompt: String,
    /// The seed, or where the initial latents came from.
    pub seed: String,
    pub steps: usize,
    pub guidance_scale: f32,
    pub width: i32,
    pub height: i32,
    pub model: String,
    /// Image to image: the share of the steps that ran.
    pub strength: Option<f64>,
    /// Image to image: the picture started from.
    pub image: Option<String>,
    /// Inpainting: the mask picture.
    pub mask: Option<String>,
    /// The LoRA adapters applied, as `FILE:SCALE, ...`.
    pub loras: Option<String>,
}

impl Parameters {
    /// The keyword/value pairs of the PNG's text chunks.
    pub fn text(&self) -> Vec<(&'static str, String)> {
        let mut text = vec![];
        if let Some(prompt) = &self.prompt {
            text.push(("prompt", prompt.clone()));
        }
        text.extend([
            ("negative_prompt", self.negative_prompt.clone()),
            ("seed", self.seed.clone()),
            ("steps", self.steps.to_string()),
            ("guidance_scale", self.guidance_scale.to_string()),
            ("size", format!("{}x{}", self.width, self.height)),
            ("model", self.model.clone()),
        ]);
        // Only what a run used: a plain text-to-image PNG carries none of these.
        let edits = [
            ("strength", self.strength.map(|s| s.to_string())),
            ("image", self.image.clone()),
            ("mask", self.mask.clone()),
            ("loras", self.loras.clone()),
        ];
        text.extend(
            edits
                .into_iter()
                .filter_map(|(key, value)| Some((key, value?))),
        );
        text.push(("software", format!("dit {}", env!("CARGO_PKG_VERSION"))));
        text
    }
}

/// `picture` as PNG bytes with `text` as iTXt chunks (UTF-8 keyword/value pairs).
pub fn png_bytes(picture: &Rgb8, text: &[(&str, String)]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, picture.width, picture.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    for (key, value) in text {
        encoder.add_itxt_chunk(key.to_string(), value.clone())?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&picture.pixels)?;
    writer.finish()?;
    Ok(bytes)
}

/// Writes `picture` as a PNG with `text` as iTXt chunks. The file appears whole or not at
/// all: it is written beside `path` and renamed.
pub fn write_png(path: &Path, picture: &Rgb8, text: &[(&str, String)]) -> Result<()> {
    let io = |source: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = png_bytes(picture, text)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let partial = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&partial, &bytes).map_err(io)?;
    std::fs::rename(&partial, path).map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        io(e)
    })
}

/// The paths a batch of `n` pictures is written to: `path` itself for one, else
/// `stem-0.png`, `stem-1.png`, ... beside it.
pub fn batch_paths(path: &Path, n: usize) -> Vec<std::path::PathBuf> {
    if n == 1 {
        return vec![path.to_path_buf()];
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..n)
        .map(|i| path.with_file_name(format!("{stem}-{i}.{ext}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postprocessing_maps_minus_one_to_one_onto_bytes() {
        // Channel values -1, 0, 1 and out of range, at one pixel each of a 1x4 image.
        let values = [
            -1.0f32, 0.0, 1.0, 3.0, -1.0, -1.0, -1.0, -1.0, 0.5, 0.5, 0.5, -7.0,
        ];
        let image = Array::from_slice(&values, &[1, 3, 1, 4]);
        let [picture] = <[Rgb8; 1]>::try_from(to_rgb8(&image).unwrap()).unwrap();
        assert_eq!((picture.width, picture.height), (4, 1));
        // 0.5 maps to 0.75 * 255 = 191.25 -> 191.
        assert_eq!(
            picture.pixels,
            [0, 0, 191, 128, 0, 191, 255, 0, 191, 255, 0, 0]
        );
    }

    #[test]
    fn text_chunks_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let picture = Rgb8 {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        write_png(&path, &picture, &[("prompt", "un renard 🦊".into())]).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let chunk = &reader.info().utf8_text[0];
        assert_eq!(chunk.keyword, "prompt");
        assert_eq!(chunk.get_text().unwrap(), "un renard 🦊");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn edits_are_recorded_only_when_made() {
        let plain = Parameters {
            prompt: Some("a fox".into()),
            negative_prompt: String::new(),
            seed: "7".into(),
            steps: 9,
            guidance_scale: 0.0,
            width: 256,
            height: 256,
            model: "tiny".into(),
            strength: None,
            image: None,
            mask: None,
            loras: None,
        };
        let keys = |p: &Parameters| p.text().into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert!(!keys(&plain).contains(&"strength"));
        let edited = Parameters {
            strength: Some(0.6),
            image: Some("in.png".into()),
            mask: Some("mask.png".into()),
            loras: Some("a.safetensors:0.5, b.safetensors:1".into()),
            ..plain
        };
        let text = edited.text();
        for (key, value) in [
            ("strength", "0.6"),
            ("image", "in.png"),
            ("mask", "mask.png"),
            ("loras", "a.safetensors:0.5, b.safetensors:1"),
        ] {
            assert!(text.contains(&(key, value.to_string())), "{key}: {text:?}");
        }
    }
}
