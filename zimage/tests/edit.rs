//! Image to image, inpainting and LoRA against diffusers' `ZImageImg2ImgPipeline`,
//! `ZImageInpaintPipeline` and `ZImageLoraLoaderMixin` on the random pipeline folder, with
//! the draws diffusers made recorded (`tests/fixtures/gen_fixtures.py`, section 5); the
//! same through `dit generate`, and its one-line errors.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use dit::teacache::TeaCacheOptions;
use dit::weights::ModelSource;
use mlx::io::load_safetensors;
use mlx::nn::{QuantConfig, QuantFormat};
use mlx::{Array, Dtype};
use serde::Deserialize;
use vae::Tiling;
use zimage::edit::{self, LatentDraw};
use zimage::pipeline::{LoadOptions, LoraSpec, Pipeline};
use zimage::prompt::MAX_SEQUENCE_LENGTH;
use zimage::resample;
use zimage::sampler::{self, Caption, Guidance, Noise, Request};

mod common;
use common::{check, fail, fixtures, floats, path, relative_error, succeed};

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
    lora_scale: f32,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt: String,
    negative_prompt: Option<String>,
    strength: f64,
    guidance_scale: f32,
    mask: bool,
    num_inference_steps: usize,
    timesteps: Vec<f32>,
}

fn edit_dir() -> PathBuf {
    fixtures().join("edit")
}

fn cases() -> Cases {
    let text = std::fs::read_to_string(edit_dir().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference(name: &str) -> BTreeMap<String, Array> {
    load_safetensors(edit_dir().join(format!("{name}.safetensors")))
        .unwrap()
        .tensors
}

fn load(options: LoadOptions) -> Pipeline {
    Pipeline::load(&ModelSource::Dir(fixtures().join("pipeline")), options).unwrap()
}

/// A request of the fixture's prompt (and negative prompt, with guidance) from `noise`.
fn request(
    pipeline: &Pipeline,
    case_prompt: &str,
    negative: &str,
    guidance: f32,
    steps: usize,
    noise: &Array,
) -> Request {
    let embeds = pipeline
        .encode_prompts(&[case_prompt, negative], MAX_SEQUENCE_LENGTH)
        .unwrap();
    let [_, _, h, w] = noise.dims();
    Request {
        width: w * sampler::VAE_SCALE,
        height: h * sampler::VAE_SCALE,
        steps,
        noise: Noise::Given(noise.clone()),
        guidance: Guidance {
            scale: guidance,
            ..Guidance::off()
        },
        caption: Caption::from_embeds(&embeds[0].embeds),
        negative: Caption::from_embeds(&embeds[1].embeds),
        scheduler: pipeline.scheduler.clone(),
        teacache: TeaCacheOptions::off(),
        record_changes: false,
    }
}

#[test]
fn image_to_image_and_inpainting_match_diffusers() {
    let pipeline = load(LoadOptions {
        vae_encoder: true,
        ..LoadOptions::from(Dtype::F32)
    });
    let picture = edit::read_picture(&edit_dir().join("picture.png")).unwrap();
    let mask = edit::read_picture(&edit_dir().join("mask.png")).unwrap();
    let cases = cases().cases;
    assert!(cases.iter().filter(|c| !c.mask).count() >= 2 && cases.iter().any(|c| c.mask));
    for case in &cases {
        let reference = reference(&case.name);
        let init = edit::init_image(
            &pipeline,
            &picture,
            case.mask.then_some(&mask),
            case.strength,
            LatentDraw::Given(reference["encode_noise"].clone()),
            Tiling::Off,
        )
        .unwrap();
        let name = &case.name;
        check(
            &format!("{name}: image_latents"),
            &init.latents,
            &reference["image_latents"],
        );
        if let Some(mask) = &init.mask {
            assert_eq!(
                floats(mask),
                floats(&reference["mask_latents"]),
                "{name}: mask"
            );
        }
        let negative = case.negative_prompt.clone().unwrap_or_default();
        let request = request(
            &pipeline,
            &case.prompt,
            &negative,
            case.guidance_scale,
            case.num_inference_steps,
            &reference["latents"],
        );
        let generation =
            sampler::generate_until(pipeline.transformer(), &request, Some(&init), |_, _| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(generation.schedule.timesteps, case.timesteps, "{name}");
        check(
            &format!("{name}: final_latents"),
            &generation.latents,
            &reference["final_latents"],
        );
        let image = pipeline.decode(&generation.latents, Tiling::Off).unwrap();
        check(
            &format!("{name}: image_raw"),
            &image,
            &reference["image_raw"],
        );
    }
}

/// The fixture's LoRA run: 2 steps without guidance from its latents.
fn lora_run(options: LoadOptions) -> (Array, Array) {
    let pipeline = load(options);
    let reference = reference("lora");
    let request = request(
        &pipeline,
        "a red fox in the snow",
        "",
        0.0,
        2,
        &reference["latents"],
    );
    let generation = sampler::generate(pipeline.transformer(), &request, |_, _| {}).unwrap();
    let image = pipeline.decode(&generation.latents, Tiling::Off).unwrap();
    (generation.latents, image)
}

fn with_lora(file: &str, quantize: Option<QuantConfig>) -> LoadOptions {
    LoadOptions {
        loras: vec![LoraSpec {
            path: edit_dir().join(file),
            scale: cases().lora_scale,
        }],
        quantize,
        ..LoadOptions::from(Dtype::F32)
    }
}

#[test]
fn lora_adapters_match_diffusers_in_both_layouts() {
    let reference = reference("lora");
    let (latents, image) = lora_run(with_lora("lora_peft.safetensors", None));
    check(
        "lora (PEFT): final_latents",
        &latents,
        &reference["final_latents"],
    );
    check("lora (PEFT): image_raw", &image, &reference["image_raw"]);
    // The Kohya copy holds the same matrices and alpha: the same merged weights.
    let (kohya_latents, kohya_image) = lora_run(with_lora("lora_kohya.safetensors", None));
    assert_eq!(floats(&kohya_latents), floats(&latents));
    assert_eq!(floats(&kohya_image), floats(&image));
}

#[test]
fn lora_beside_quantized_layers_applies_the_adapter() {
    let reference = reference("lora");
    let quantize = Some(QuantConfig::new(QuantFormat::Mxfp8));
    let (adapted, _) = lora_run(with_lora("lora_peft.safetensors", quantize));
    let (plain, _) = lora_run(LoadOptions {
        quantize,
        ..LoadOptions::from(Dtype::F32)
    });
    let target = floats(&reference["final_latents"]);
    let with = relative_error(&floats(&adapted), &target);
    let without = relative_error(&floats(&plain), &target);
    eprintln!("mxfp8 + LoRA vs diffusers' LoRA: {with:.2e}; mxfp8 without it: {without:.2e}");
    // 8-bit weights cost precision; leaving the adapter out costs far more.
    assert!(with < 0.1 && with * 5.0 < without, "{with} vs {without}");
}

/// `fit_sides` resizes as diffusers' image processor does (PIL's Lanczos), byte for byte:
/// horizontal pass first (53x37 to 48x32) and vertical pass first (17x47 to 16x32).
#[test]
fn resizing_matches_pils_lanczos_exactly() {
    for (name, expected) in [
        ("resize.png", "resize_expected.png"),
        ("resize_tall.png", "resize_tall_expected.png"),
    ] {
        let input = edit::read_picture(&edit_dir().join(name)).unwrap();
        let expected = edit::read_picture(&edit_dir().join(expected)).unwrap();
        let ours = edit::fit_sides(&input).unwrap();
        assert_eq!((ours.width, ours.height), (expected.width, expected.height));
        assert!(ours.pixels == expected.pixels, "{name} differs from PIL");
    }
}

/// PIL's `Image.resize((w, h), Image.LANCZOS)` of a 29x23 picture: wider and shorter,
/// narrower and taller, larger on both sides.
#[test]
fn lanczos_matches_pil_up_and_down() {
    let input = edit::read_picture(&edit_dir().join("resize_odd.png")).unwrap();
    for (width, height) in [(40, 17), (13, 48), (61, 50)] {
        let name = format!("resize_odd_{width}x{height}.png");
        let expected = edit::read_picture(&edit_dir().join(&name)).unwrap();
        let ours = resample::lanczos_rgb8(&input.pixels, input.width, input.height, width, height);
        assert!(ours == expected.pixels, "{name} differs from PIL");
    }
}

#[test]
fn dit_generate_edits_the_reference_picture() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("pipeline");
    let picture = edit_dir().join("picture.png");
    let mask = edit_dir().join("mask.png");
    for case in cases().cases {
        let noise = edit_dir().join(format!("{}.safetensors", case.name));
        let image = dir.path().join(format!("{}.safetensors", case.name));
        let steps = case.num_inference_steps.to_string();
        let strength = case.strength.to_string();
        let cfg = case.guidance_scale.to_string();
        let negative = case.negative_prompt.clone().unwrap_or_default();
        let mut args = vec![
            "generate",
            "--model",
            path(&model),
            "--prompt",
            &case.prompt,
            "--negative-prompt",
            &negative,
            "--cfg",
            &cfg,
            "--steps",
            &steps,
            "--image",
            path(&picture),
            "--strength",
            &strength,
            "--init-latents",
            path(&noise),
            "--dtype",
            "f32",
            "--save-image",
            path(&image),
        ];
        if case.mask {
            args.extend(["--mask", path(&mask)]);
        }
        let png = dir.path().join(format!("{}.png", case.name));
        args.extend(["--out", path(&png)]);
        succeed(&args);
        let ours = load_safetensors(&image).unwrap().tensors["image"].clone();
        check(
            &format!("dit generate {}", case.name),
            &ours,
            &reference(&case.name)["image_raw"],
        );
        // What reproduces the edit.
        let text = png_text(&png);
        assert_eq!(text["strength"], strength, "{text:?}");
        assert_eq!(text["image"], path(&picture), "{text:?}");
        assert_eq!(
            text.get("mask").map(String::as_str),
            case.mask.then(|| path(&mask))
        );
        assert!(!text.contains_key("loras"), "{text:?}");
    }
    let lora = format!(
        "{}:{}",
        path(&edit_dir().join("lora_kohya.safetensors")),
        cases().lora_scale
    );
    let image = dir.path().join("lora.safetensors");
    let png = dir.path().join("lora.png");
    succeed(&[
        "generate",
        "--out",
        path(&png),
        "--model",
        path(&model),
        "--prompt",
        "a red fox in the snow",
        "--steps",
        "2",
        "--lora",
        &lora,
        "--init-latents",
        path(&edit_dir().join("lora.safetensors")),
        "--dtype",
        "f32",
        "--save-image",
        path(&image),
    ]);
    let text = png_text(&png);
    assert_eq!(text["loras"], lora, "{text:?}");
    assert!(!text.contains_key("strength"), "{text:?}");
    let ours = load_safetensors(&image).unwrap().tensors["image"].clone();
    check(
        "dit generate --lora",
        &ours,
        &reference("lora")["image_raw"],
    );
}

/// The text chunks of a PNG file.
fn png_text(file: &std::path::Path) -> BTreeMap<String, String> {
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(file).unwrap()))
        .read_info()
        .unwrap();
    let chunks = &reader.info().utf8_text;
    chunks
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect()
}

#[test]
fn dit_info_describes_an_adapter_and_its_model_in_one_json_object() {
    let lora = edit_dir().join("lora_kohya.safetensors");
    let model = fixtures().join("pipeline");
    let stdout = succeed(&[
        "info",
        "--lora",
        path(&lora),
        "--model",
        path(&model),
        "--json",
    ]);
    assert_eq!(stdout.trim_end().lines().count(), 1, "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["architecture"], "ZImageTransformer2DModel");
    assert_eq!(report["adapter"]["lora"], path(&lora));
    assert_eq!(report["adapter"]["layers"].as_array().unwrap().len(), 35);
    assert_eq!(report["adapter"]["layers"][0]["rank"], 4);
    assert_eq!(report["loras"][0]["path"], path(&lora));
    // Without a model: the adapter's own object.
    let alone = succeed(&["info", "--lora", path(&lora), "--json"]);
    let alone: serde_json::Value = serde_json::from_str(&alone).unwrap();
    assert_eq!(alone, report["adapter"]);
}

#[test]
fn bad_pictures_masks_strengths_and_adapters_are_one_line_errors() {
    let model = fixtures().join("pipeline");
    let picture = edit_dir().join("picture.png");
    let not_a_picture = edit_dir().join("lora.safetensors");
    let other_size = edit_dir().join("resize.png");
    let base = [
        "generate",
        "--model",
        path(&model),
        "--prompt",
        "a fox",
        "--steps",
        "2",
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let line = fail(&args);
        assert_eq!(line.trim_end().lines().count(), 1, "{line}");
        line
    };
    let line = run(&["--image", path(&not_a_picture)]);
    assert!(
        line.contains("lora.safetensors: not a PNG or JPEG picture"),
        "{line}"
    );
    let line = run(&["--image", path(&picture), "--mask", path(&other_size)]);
    assert!(
        line.contains("resize.png") && line.contains("53x37"),
        "{line}"
    );
    for strength in ["0", "1.5", "-0.2", "nan"] {
        let line = run(&["--image", path(&picture), "--strength", strength]);
        assert!(
            line.contains("--strength") && line.contains("must be in (0, 1]"),
            "{line}"
        );
    }
    let line = run(&["--strength", "0.5"]);
    assert!(line.contains("--strength needs --image"), "{line}");
    // The fixture adapter is for the fixture's transformer, not the built-in one.
    let lora = edit_dir().join("lora_peft.safetensors");
    let line = fail(&[
        "generate",
        "--model",
        "tiny",
        "--steps",
        "1",
        "--lora",
        path(&lora),
    ]);
    assert!(
        line.contains("lora_peft.safetensors") && line.contains("does not fit"),
        "{line}"
    );
    assert_eq!(line.trim_end().lines().count(), 1, "{line}");
    let line = fail(&["info", "--lora", path(&lora), "--model", "tiny"]);
    assert!(line.contains("35 adapted layers do not fit"), "{line}");
    let listing = succeed(&[
        "info",
        "--lora",
        path(&edit_dir().join("lora_kohya.safetensors")),
    ]);
    assert!(listing.contains("(35 layers)"), "{listing}");
    assert!(
        listing.contains("layers.1.attention.to_out.0")
            && listing.contains("rank   4  alpha     2"),
        "{listing}"
    );
    let line = run(&["--lora", path(&picture)]);
    assert!(line.contains("picture.png"), "{line}");
    let line = run(&[
        "--lora",
        &format!("{}:0.5", path(&edit_dir().join("missing.safetensors"))),
    ]);
    assert!(line.contains("missing.safetensors"), "{line}");
}
