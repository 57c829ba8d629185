//! The whole pipeline against diffusers' `ZImagePipeline` on the random pipeline folder that
//! `tests/fixtures/gen_fixtures.py` writes: prompt embeddings, the latents after sampling
//! from the given noise, and the decoded image, with and without guidance; the same through
//! the `dit` command.

use dit::teacache::TeaCacheOptions;
use dit::weights::ModelSource;
use mlx::io::load_safetensors;
use mlx::Dtype;
use serde::Deserialize;
use vae::Tiling;
use zimage::pipeline::Pipeline;
use zimage::prompt::MAX_SEQUENCE_LENGTH;
use zimage::sampler::{self, Caption, Guidance, Noise, Request};

mod common;
use common::{check, fixtures, floats, path, succeed};

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt: String,
    negative_prompt: Option<String>,
    guidance_scale: f32,
    cfg_normalization: bool,
    cfg_truncation: f32,
    num_inference_steps: usize,
    height: i32,
    width: i32,
    guided_steps: Vec<bool>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str::<Cases>(&text).unwrap().cases
}

fn guidance(case: &Case) -> Guidance {
    Guidance {
        scale: case.guidance_scale,
        truncation: case.cfg_truncation,
        // diffusers' `cfg_normalization=True` is a factor of 1.
        normalization: if case.cfg_normalization { 1.0 } else { 0.0 },
    }
}

#[test]
fn the_pipeline_matches_diffusers_with_and_without_guidance() {
    let pipeline =
        Pipeline::load(&ModelSource::Dir(fixtures().join("pipeline")), Dtype::F32).unwrap();
    let cases = cases();
    assert!(cases.iter().any(|c| c.guidance_scale == 0.0));
    assert!(cases
        .iter()
        .any(|c| c.guided_steps.contains(&false) && c.guidance_scale > 0.0));
    for case in &cases {
        let reference = load_safetensors(fixtures().join(format!("{}.safetensors", case.name)))
            .unwrap()
            .tensors;
        let negative = case.negative_prompt.clone().unwrap_or_default();
        let embeds = pipeline
            .encode_prompts(&[&case.prompt, &negative], MAX_SEQUENCE_LENGTH)
            .unwrap();
        check(
            &format!("{}: prompt_embeds", case.name),
            &embeds[0].embeds,
            &reference["prompt_embeds"],
        );
        if let Some(neg) = reference.get("negative_prompt_embeds") {
            check(
                &format!("{}: negative_prompt_embeds", case.name),
                &embeds[1].embeds,
                neg,
            );
        }
        let request = Request {
            width: case.width,
            height: case.height,
            steps: case.num_inference_steps,
            noise: Noise::Given(reference["latents"].clone()),
            guidance: guidance(case),
            caption: Caption::from_embeds(&embeds[0].embeds),
            negative: Caption::from_embeds(&embeds[1].embeds),
            scheduler: pipeline.scheduler.clone(),
            teacache: TeaCacheOptions::off(),
            record_changes: false,
        };
        let generation = sampler::generate(pipeline.transformer(), &request, |_, _| {}).unwrap();
        check(
            &format!("{}: final_latents", case.name),
            &generation.latents,
            &reference["final_latents"],
        );
        let image = pipeline.decode(&generation.latents, Tiling::Off).unwrap();
        check(
            &format!("{}: image_raw", case.name),
            &image,
            &reference["image_raw"],
        );
    }
}

#[test]
fn dit_generate_draws_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline");
    for case in cases() {
        let latents = fixtures().join(format!("{}.safetensors", case.name));
        let out = dir.path().join(format!("{}.png", case.name));
        let image = dir.path().join(format!("{}.safetensors", case.name));
        let steps = case.num_inference_steps.to_string();
        let cfg = case.guidance_scale.to_string();
        let truncation = case.cfg_truncation.to_string();
        let normalization = if case.cfg_normalization { "1" } else { "0" };
        let negative = case.negative_prompt.clone().unwrap_or_default();
        succeed(&[
            "generate",
            "--model",
            path(&model),
            "--prompt",
            &case.prompt,
            "--negative-prompt",
            &negative,
            "--cfg",
            &cfg,
            "--cfg-truncation",
            &truncation,
            "--cfg-normalization",
            normalization,
            "--steps",
            &steps,
            "--init-latents",
            path(&latents),
            "--dtype",
            "f32",
            "--out",
            path(&out),
            "--save-image",
            path(&image),
        ]);
        let ours = load_safetensors(&image).unwrap().tensors["image"].clone();
        let reference = load_safetensors(&latents).unwrap().tensors["image_raw"].clone();
        check(&format!("dit generate {}", case.name), &ours, &reference);

        // The PNG is the reference picture as diffusers' processor makes it, within one
        // level where rounding sits on a boundary.
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        reader.next_frame(&mut pixels).unwrap();
        let info = reader.info();
        assert_eq!(
            (info.width, info.height),
            (case.width as u32, case.height as u32)
        );
        let text: Vec<(String, String)> = info
            .utf8_text
            .iter()
            .map(|t| (t.keyword.clone(), t.get_text().unwrap()))
            .collect();
        assert!(
            text.contains(&("prompt".into(), case.prompt.clone())),
            "{text:?}"
        );
        assert!(text.contains(&("steps".into(), steps.clone())), "{text:?}");
        let expected = floats(&load_safetensors(&latents).unwrap().tensors["image"]);
        let worst = pixels
            .iter()
            .zip(&expected)
            .map(|(&p, &e)| (f32::from(p) - (e * 255.0).round()).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1.0, "{}: a pixel is {worst} levels off", case.name);
    }
}
