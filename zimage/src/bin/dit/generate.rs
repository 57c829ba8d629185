//! `dit generate`: prompt to picture, with a progress bar and a JSON report.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dit::teacache::{Coefficients, Mode, TeaCacheOptions};
use dit::weights::{self, ModelSource};
use indicatif::{ProgressBar, ProgressStyle};
use mlx::io::{load_safetensors, save_safetensors};
use mlx::{memory, Array, Module};
use serde_json::json;
use zimage::edit::{self, LatentDraw};
use zimage::picture::{self, batch_paths, Rgb8};
use zimage::pipeline::{LoadOptions, LoraSpec, Pipeline};
use zimage::preview;
use zimage::prompt::{PromptEmbeds, MAX_SEQUENCE_LENGTH};
use zimage::sampler::{self, Caption, Guidance, InitImage, Noise, Request};
use zimage::scheduler;

use crate::inputs;
use crate::quantize_arg::QuantizeArg;
use crate::{compute_dtype, info, mib, model_source, CliResult, FloatDtype, TilingArg};

/// Tokens of the seeded random caption of transformer-only checkpoints.
const RANDOM_CAPTION_TOKENS: i32 = 64;

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, a diffusers pipeline folder, or a transformer checkpoint directory.
    #[arg(long, value_parser = model_source, default_value = "tiny")]
    model: ModelSource,
    /// What to draw (needed with a pipeline unless --cap-feats is given).
    #[arg(long)]
    prompt: Option<String>,
    /// What guidance steers away from.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Classifier-free guidance scale (0: no guidance, as Z-Image-Turbo samples).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    cfg: f32,
    /// Steps whose normalized time (1000 - t) / 1000 exceeds this run without guidance.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    cfg_truncation: f32,
    /// Cap each guided prediction's norm at this multiple of the positive one's (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    cfg_normalization: f32,
    /// Denoising steps.
    #[arg(long, default_value_t = sampler::DEFAULT_STEPS)]
    steps: usize,
    /// Image width in pixels, a multiple of 16 (default: 256 for the built-in pipelines,
    /// 1024 for a folder).
    #[arg(long)]
    width: Option<i32>,
    /// Image height in pixels, a multiple of 16 (default as the width).
    #[arg(long)]
    height: Option<i32>,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start from tensor `latents` [B, 16, h, w] of this safetensors file instead of seeded
    /// noise; the picture is then 8h x 8w. With --image they are the noise mixed into the
    /// picture's latents (and optional `encode_noise` the posterior's draw): what diffusers
    /// draws from its generator, not its `latents=` argument, which skips the picture.
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Image to image: start from this PNG or JPEG picture, resized down to multiples of 16
    /// (its size is the output's). With --init-latents, tensor `latents` is the noise it is
    /// mixed with and tensor `encode_noise`, if present, the draw from the VAE's posterior.
    #[arg(long)]
    image: Option<PathBuf>,
    /// With --image: the share of the steps that run, in (0, 1]; more repaints more
    /// (default 0.6, and 1 with --mask, as diffusers).
    #[arg(long, allow_negative_numbers = true)]
    strength: Option<f64>,
    /// Inpainting, with --image: a picture of the same size, white where to repaint.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// A LoRA adapter for the transformer, FILE or FILE:SCALE (default scale 1);
    /// repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = LoraSpec::parse)]
    loras: Vec<LoraSpec>,
    /// Skip (and count) adapter layers that match no layer of the transformer instead of
    /// refusing the adapter.
    #[arg(long)]
    lora_lenient: bool,
    /// Caption features instead of a prompt: tensor `cap_feats` [L, cap_feat_dim] or
    /// [1, L, cap_feat_dim] and, for --cfg, optionally `negative_cap_feats`.
    #[arg(long)]
    cap_feats: Option<PathBuf>,
    /// Prompt tokens kept (longer prompts are cut on the right).
    #[arg(long, default_value_t = MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    /// Tiled VAE decoding: auto tiles latents larger than the VAE's tile.
    #[arg(long, value_enum, default_value = "auto")]
    vae_tiling: TilingArg,
    /// Keep the text encoder loaded while denoising.
    #[arg(long)]
    keep_text_encoder: bool,
    /// Run the graph functions eagerly instead of compiled.
    #[arg(long)]
    no_compile: bool,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    #[command(flatten)]
    quantize: QuantizeArg,
    /// Write the picture (a batch: NAME-0.png, NAME-1.png, ...). Without a VAE, a preview
    /// of the latents.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the final latents as tensor `latents`.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Write the VAE decoder's raw output as tensor `image` [B, 3, H, W] float32.
    #[arg(long)]
    save_image: Option<PathBuf>,
    /// Print a JSON report as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// TeaCache: reuse the last noise prediction (naive) or the main blocks' residual
    /// (poly) on steps whose input barely changed.
    #[arg(long, value_enum, default_value = "off")]
    teacache: TeaCacheArg,
    /// TeaCache's threshold (default: 0.1 for naive, 0.3 for poly).
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f64>,
    /// Steps at the start that always compute (default: 3 with --cfg, else 1).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Poly mode's polynomial, from `dit teacache-fit` (default: the model's own).
    #[arg(long)]
    coefficients: Option<PathBuf>,
}

/// `--teacache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TeaCacheArg {
    Off,
    Naive,
    Poly,
}

impl TeaCacheArg {
    fn mode(self) -> Mode {
        match self {
            TeaCacheArg::Off => Mode::Off,
            TeaCacheArg::Naive => Mode::Naive,
            TeaCacheArg::Poly => Mode::Poly,
        }
    }
}

/// Time and peak memory of one phase.
struct Phase {
    ms: f64,
    peak_bytes: usize,
}

/// Runs `f` as a phase: its wall time and the peak memory while it ran.
fn phase<T>(f: impl FnOnce() -> CliResult<T>) -> CliResult<(T, Phase)> {
    memory::reset_peak_memory()?;
    let started = Instant::now();
    let value = f()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Ok((
        value,
        Phase {
            ms,
            peak_bytes: memory::peak_memory(),
        },
    ))
}

pub fn run(args: Args) -> CliResult {
    mlx::compile::set_eager(args.no_compile);
    check_flags(&args)?;
    check_outputs(&args)?;
    let dtype = compute_dtype(args.dtype)?;
    let pictures = read_pictures(&args)?;
    let started = Instant::now();
    let options = LoadOptions {
        quantize: args.quantize.config()?,
        matmul: args.quantize.matmul(),
        keep_text_encoder: args.keep_text_encoder,
        vae_encoder: pictures.is_some(),
        loras: args.loras.clone(),
        lora_lenient: args.lora_lenient,
        ..LoadOptions::from(dtype)
    };
    let (pipeline, load) = phase(|| Ok(Pipeline::load(&args.model, options)?))?;
    for (spec, applied) in &pipeline.adapters {
        let skipped = match applied.skipped.len() {
            0 => String::new(),
            n => format!(", {n} unmatched layers skipped"),
        };
        eprintln!(
            "lora {} at {}: {} layers{skipped}",
            spec.path.display(),
            spec.scale,
            applied.layers
        );
    }
    // Read once: it holds the starting latents and, with --image, the posterior's draw.
    let init_file = match &args.init_latents {
        Some(path) => Some((path.as_path(), load_safetensors(path)?.tensors)),
        None => None,
    };
    let noise = match &init_file {
        Some((path, tensors)) => Noise::Given(latents_of(
            tensors,
            path,
            pipeline.transformer().config.in_channels,
        )?),
        None => Noise::Seeded(args.seed),
    };
    let ((caption, negative, prompt_tokens), encode) = phase(|| captions(&args, &pipeline))?;
    let mut request = request(&args, &pipeline, noise, caption, negative)?;
    let (init, image_encode) = match &pictures {
        Some((picture, mask)) => {
            request.width = picture.width as i32;
            request.height = picture.height as i32;
            let recorded = match &init_file {
                Some((path, tensors)) => {
                    inputs::float_tensor(tensors, path, "encode_noise")?.map(|eps| (*path, eps))
                }
                None => None,
            };
            let (init, encode) =
                phase(|| init_image(&args, &pipeline, picture, mask.as_ref(), recorded))?;
            (Some(init), Some(encode))
        }
        None => (None, None),
    };
    request.latent_hw()?;
    if let (Some(init), Noise::Given(noise), Some(path)) =
        (&init, &request.noise, &args.init_latents)
    {
        if noise.shape() != init.latents.shape() {
            return Err(format!(
                "--init-latents {}: `latents` {:?} must be the shape of the picture's latents \
                 {:?}",
                path.display(),
                noise.shape(),
                init.latents.shape()
            )
            .into());
        }
    }

    crate::note_kernel_compilation();
    // With a picture only the last steps of the schedule run.
    let steps_run = match &init {
        Some(init) => scheduler::steps_at_strength(args.steps, init.strength),
        None => args.steps,
    };
    let bar = progress_bar(steps_run);
    let step_bar = bar.clone();
    let (generation, mut denoise) = phase(|| {
        let on_step = move |_, report: &sampler::StepReport| {
            step_bar.set_message(format!("{:.0} ms/step", report.elapsed.as_secs_f64() * 1e3));
            step_bar.inc(1);
            ControlFlow::Continue(())
        };
        Ok(sampler::generate_until(
            pipeline.transformer(),
            &request,
            init.as_ref(),
            on_step,
        )?)
    })?;
    bar.finish_and_clear();
    denoise.peak_bytes = denoise.peak_bytes.max(generation.peak_bytes());
    let latents = &generation.latents;
    let [batch, _, h, w] = latents.dims();
    let (width, height) = (w * sampler::VAE_SCALE, h * sampler::VAE_SCALE);

    let decoded = match &pipeline.vae {
        Some(_) => {
            let (image, decode) = phase(|| {
                let image = pipeline.decode(latents, args.vae_tiling.tiling())?;
                image.check()?;
                Ok(image)
            })?;
            Some((image, decode))
        }
        None => None,
    };

    let mut written = Vec::new();
    if let Some(path) = &args.out {
        match &decoded {
            Some((image, _)) => {
                let text = png_text(&args, &pipeline, width, height);
                let pictures = picture::to_rgb8(image)?;
                for (picture, path) in pictures.iter().zip(batch_paths(path, pictures.len())) {
                    picture::write_png(&path, picture, &text)?;
                    written.push(path);
                }
            }
            None => {
                preview::write_png(&latents.slice_axis(0, 0, 1), path)?;
                written.push(path.clone());
            }
        }
    }
    if let Some(path) = &args.save_latents {
        save_safetensors(path, [("latents", latents)], &BTreeMap::new())?;
        written.push(path.clone());
    }
    if let (Some(path), Some((image, _))) = (&args.save_image, &decoded) {
        save_safetensors(
            path,
            [("image", &image.astype(mlx::Dtype::F32))],
            &BTreeMap::new(),
        )?;
        written.push(path.clone());
    }

    let step_ms: Vec<f64> = generation
        .steps
        .iter()
        .map(|s| s.elapsed.as_secs_f64() * 1e3)
        .collect();
    let active: Vec<usize> = generation.steps.iter().map(|s| s.active_bytes).collect();
    let step_peaks: Vec<usize> = generation.steps.iter().map(|s| s.peak_bytes).collect();
    let mean_ms = step_ms.iter().sum::<f64>() / step_ms.len().max(1) as f64;
    let decode = decoded.as_ref().map(|(_, phase)| phase);
    let image_encode_ms = image_encode.as_ref().map(|p| p.ms);
    println!(
        "{} steps of {width}x{height} on {}: encode {:.0} ms{}, {:.0} ms/step, decode {:.0} ms; \
         weights {:.1} MiB, peak {:.1} MiB",
        generation.schedule.len(),
        args.model,
        encode.ms,
        image_encode_ms.map_or(String::new(), |ms| format!(", picture encode {ms:.0} ms")),
        mean_ms,
        decode.map_or(0.0, |d| d.ms),
        mib(pipeline.weights_bytes()),
        mib(denoise.peak_bytes.max(decode.map_or(0, |d| d.peak_bytes))),
    );
    for path in &written {
        println!("wrote {}", path.display());
    }
    if args.json {
        let model = pipeline.transformer();
        let report = json!({
            "model": args.model.to_string(),
            "steps": args.steps,
            "width": width,
            "height": height,
            "batch": batch,
            "seed": args.seed,
            "cfg": args.cfg,
            "compiled": !args.no_compile,
            "compute_dtype": dtype.to_string(),
            "device": crate::device_json(),
            "prompt_tokens": prompt_tokens,
            "forward_passes": generation.forward_passes(),
            "cache_hits": generation.cache_hits(),
            "computed_steps": generation.computed,
            "teacache": teacache_report(&request.teacache),
            "quantization": info::quantization_json(&pipeline.transformer.quantization, model.nbytes()),
            "timesteps": generation.schedule.timesteps,
            "step_ms": step_ms,
            "active_bytes": active,
            "step_peak_bytes": step_peaks,
            "peak_bytes": denoise.peak_bytes,
            "weights_bytes": pipeline.weights_bytes(),
            "transformer_bytes": model.nbytes(),
            "load_ms": load.ms,
            "load_peak_bytes": load.peak_bytes,
            "strength": init.as_ref().map(|i| i.strength),
            "inpaint": init.as_ref().is_some_and(|i| i.mask.is_some()),
            "loras": info::loras_json(&pipeline),
            "image_encode_ms": image_encode_ms,
            "encode_ms": encode.ms,
            "encode_peak_bytes": encode.peak_bytes,
            "denoise_ms": denoise.ms,
            "denoise_peak_bytes": denoise.peak_bytes,
            "decode_ms": decode.map(|d| d.ms),
            "decode_peak_bytes": decode.map(|d| d.peak_bytes),
            "total_ms": started.elapsed().as_secs_f64() * 1e3,
        });
        println!("{report}");
    }
    Ok(())
}

/// The flags that need no model, checked before loading one.
fn check_flags(args: &Args) -> CliResult {
    if !(1..=sampler::MAX_STEPS).contains(&args.steps) {
        return Err(format!(
            "--steps must be between 1 and {}, found {}",
            sampler::MAX_STEPS,
            args.steps
        )
        .into());
    }
    if !(args.cfg.is_finite() && args.cfg >= 0.0) {
        return Err(format!("--cfg must be a non-negative number, found {}", args.cfg).into());
    }
    if !(args.cfg_normalization.is_finite() && args.cfg_normalization >= 0.0) {
        return Err(format!(
            "--cfg-normalization must be a non-negative number, found {}",
            args.cfg_normalization
        )
        .into());
    }
    if !args.cfg_truncation.is_finite() {
        return Err(format!(
            "--cfg-truncation must be a number, found {}",
            args.cfg_truncation
        )
        .into());
    }
    if args.image.is_none() {
        for (flag, given) in [
            ("--strength", args.strength.is_some()),
            ("--mask", args.mask.is_some()),
        ] {
            if given {
                return Err(format!("{flag} needs --image (the picture to start from)").into());
            }
        }
    } else if args.width.is_some() || args.height.is_some() {
        return Err("--width/--height: with --image the picture's size is the output's".into());
    }
    if let Some(strength) = args.strength {
        sampler::check_strength(strength).map_err(|e| format!("--strength: {e}"))?;
    }
    for (flag, size) in [("--width", args.width), ("--height", args.height)] {
        if let Some(size) = size {
            sampler::check_side(size).map_err(|e| format!("{flag} {size}: {e}"))?;
        }
    }
    Ok(())
}

/// The strength of image to image: the flag's, else diffusers' defaults.
fn strength(args: &Args) -> f64 {
    args.strength
        .unwrap_or(if args.mask.is_some() { 1.0 } else { 0.6 })
}

/// `--image` and `--mask`, read, checked and cut down to multiples of 16 before a model is
/// loaded.
fn read_pictures(args: &Args) -> CliResult<Option<(Rgb8, Option<Rgb8>)>> {
    let Some(path) = &args.image else {
        return Ok(None);
    };
    let picture = edit::read_picture(path)?;
    let mask = args.mask.as_deref().map(edit::read_picture).transpose()?;
    if let (Some(mask), Some(mask_path)) = (&mask, &args.mask) {
        // Checked as read: cutting both down to multiples of 16 could hide a difference.
        edit::check_mask(&picture, mask).map_err(|e| {
            format!(
                "--mask {} and --image {}: {e}",
                mask_path.display(),
                path.display()
            )
        })?;
    }
    let fitted =
        edit::fit_sides(&picture).map_err(|e| format!("--image {}: {e}", path.display()))?;
    let mask = mask.as_ref().map(edit::fit_mask).transpose()?;
    Ok(Some((fitted, mask)))
}

/// The encoded picture: its posterior drawn from `recorded` (tensor `encode_noise` of
/// --init-latents, with its file) when that file has one, else from the seed.
fn init_image(
    args: &Args,
    pipeline: &Pipeline,
    picture: &Rgb8,
    mask: Option<&Rgb8>,
    recorded: Option<(&Path, Array)>,
) -> CliResult<InitImage> {
    let draw = match recorded {
        Some((path, eps)) => {
            // The posterior is the VAE's latents of the picture, [1, C, H/8, W/8]: checked
            // here to name the file (`edit::init_image` checks it too, for any caller).
            let channels = pipeline
                .require_vae("encode pictures")?
                .config
                .latent_channels;
            let expected = [
                1,
                channels,
                picture.height as i32 / sampler::VAE_SCALE,
                picture.width as i32 / sampler::VAE_SCALE,
            ];
            if eps.shape() != expected {
                return Err(format!(
                    "--init-latents {}: `encode_noise` must be {expected:?} for the {}x{} \
                     picture, found {:?}",
                    path.display(),
                    picture.width,
                    picture.height,
                    eps.shape()
                )
                .into());
            }
            LatentDraw::Given(eps)
        }
        None => LatentDraw::Seeded(args.seed),
    };
    Ok(edit::init_image(
        pipeline,
        picture,
        mask,
        strength(args),
        draw,
        args.vae_tiling.tiling(),
    )?)
}

/// Output paths must be writable places: checked before minutes of sampling.
fn check_outputs(args: &Args) -> CliResult {
    for (flag, path) in [
        ("--out", &args.out),
        ("--save-latents", &args.save_latents),
        ("--save-image", &args.save_image),
    ] {
        let Some(path) = path else { continue };
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(format!(
                "{flag} {}: {} is not a directory",
                path.display(),
                parent.display()
            )
            .into());
        }
    }
    Ok(())
}

/// The positive and negative captions: from `--cap-feats`, from the prompts through the
/// text encoder, or (a transformer-only checkpoint without either) seeded random features.
fn captions(args: &Args, pipeline: &Pipeline) -> CliResult<(Caption, Caption, Option<Vec<usize>>)> {
    let dim = pipeline.transformer().config.cap_feat_dim;
    let random = |seed| Caption::random(RANDOM_CAPTION_TOKENS, dim, seed);
    if let Some(path) = &args.cap_feats {
        let caption = read_caption(path, "cap_feats")?
            .ok_or_else(|| format!("{}: no tensor `cap_feats`", path.display()))?;
        let negative = read_caption(path, "negative_cap_feats")?
            .unwrap_or_else(|| random(args.seed.wrapping_add(2)));
        return Ok((caption, negative, None));
    }
    if !pipeline.has_text_encoder() {
        if args.prompt.is_some() {
            return Err(format!(
                "--prompt: {} is a transformer checkpoint without a text encoder; give \
                 --cap-feats, or a pipeline folder",
                args.model
            )
            .into());
        }
        return Ok((
            random(args.seed.wrapping_add(1)),
            random(args.seed.wrapping_add(2)),
            None,
        ));
    }
    let prompt = args
        .prompt
        .as_deref()
        .ok_or("--prompt is required with a pipeline (or give --cap-feats)")?;
    let mut prompts = vec![prompt];
    // The negative prompt is encoded only when guidance will use it, as diffusers does.
    if args.cfg > 0.0 {
        prompts.push(&args.negative_prompt);
    }
    let embeds = pipeline.encode_prompts(&prompts, args.max_sequence_length)?;
    for (which, e) in ["prompt", "negative prompt"].iter().zip(&embeds) {
        warn_truncated(which, e, args.max_sequence_length);
    }
    let tokens = embeds.iter().map(|e| e.input_ids.len()).collect();
    let caption = Caption::from_embeds(&embeds[0].embeds);
    let negative = match embeds.get(1) {
        Some(e) => Caption::from_embeds(&e.embeds),
        None => caption.clone(),
    };
    Ok((caption, negative, Some(tokens)))
}

fn warn_truncated(which: &str, embeds: &PromptEmbeds, max: usize) {
    if embeds.dropped > 0 {
        eprintln!(
            "warning: the {which} is {} tokens with the chat template; the last {} were dropped \
             (--max-sequence-length {max})",
            embeds.input_ids.len() + embeds.dropped,
            embeds.dropped
        );
    }
}

fn progress_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  {elapsed}")
    {
        bar.set_style(style);
    }
    bar
}

/// The sampler request from the flags.
fn request(
    args: &Args,
    pipeline: &Pipeline,
    noise: Noise,
    caption: Caption,
    negative: Caption,
) -> CliResult<Request> {
    let default_size = pipeline.default_size();
    let width = args.width.unwrap_or(default_size);
    let height = args.height.or(args.width).unwrap_or(default_size);
    if let (Noise::Given(latents), true) = (&noise, args.width.is_some() || args.height.is_some()) {
        let [_, _, h, w] = latents.dims();
        let given = (w * sampler::VAE_SCALE, h * sampler::VAE_SCALE);
        if given != (width, height) {
            return Err(format!(
                "--width/--height {width}x{height} disagree with --init-latents, which are {}x{} pixels",
                given.0, given.1
            )
            .into());
        }
    }
    let guidance = Guidance {
        scale: args.cfg,
        truncation: args.cfg_truncation,
        normalization: args.cfg_normalization,
    };
    Ok(Request {
        width,
        height,
        steps: args.steps,
        noise,
        guidance,
        caption,
        negative,
        scheduler: pipeline.scheduler.clone(),
        teacache: teacache_options(args, pipeline)?,
        record_changes: false,
    })
}

fn teacache_options(args: &Args, pipeline: &Pipeline) -> CliResult<TeaCacheOptions> {
    let mode = args.teacache.mode();
    let threshold = args.threshold.unwrap_or_else(|| mode.default_threshold());
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(format!("--threshold must be a non-negative number, found {threshold}").into());
    }
    let coefficients = match (&args.coefficients, mode) {
        (Some(path), _) => Some(Coefficients::read(path)?),
        (None, Mode::Poly) => {
            let coefficients =
                weights::teacache_coefficients(&crate::transformer_source(&pipeline.source)?)?;
            if coefficients.is_none() {
                return Err(format!(
                    "--teacache poly: {} has no teacache_coefficients.json; give --coefficients FILE (from `dit teacache-fit`)",
                    args.model
                )
                .into());
            }
            coefficients
        }
        (None, _) => None,
    };
    Ok(TeaCacheOptions {
        mode,
        threshold,
        warmup: args
            .warmup_steps
            .unwrap_or(if args.cfg > 0.0 { 3 } else { 1 }),
        rescale: 1.0,
        coefficients,
    })
}

fn teacache_report(options: &TeaCacheOptions) -> serde_json::Value {
    if options.mode == Mode::Off {
        return json!({ "mode": "off" });
    }
    json!({
        "mode": options.mode.name(),
        "threshold": options.threshold,
        "warmup_steps": options.warmup,
        "coefficients": options.coefficients.as_ref().map(|c| &c.coefficients),
    })
}

/// The generation parameters a PNG carries.
fn png_text(
    args: &Args,
    pipeline: &Pipeline,
    width: i32,
    height: i32,
) -> Vec<(&'static str, String)> {
    picture::Parameters {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        seed: match &args.init_latents {
            Some(path) => format!("latents from {}", path.display()),
            None => args.seed.to_string(),
        },
        steps: args.steps,
        guidance_scale: args.cfg,
        width,
        height,
        model: args.model.to_string(),
        strength: args.image.as_ref().map(|_| strength(args)),
        image: args.image.as_ref().map(|p| p.display().to_string()),
        mask: args.mask.as_ref().map(|p| p.display().to_string()),
        loras: pipeline.loras_text(),
    }
    .text()
}

/// Tensor `latents` `[B, channels, h, w]` (floating point, even h and w) of a file.
pub fn read_latents(path: &Path, channels: i32) -> CliResult<Array> {
    latents_of(&load_safetensors(path)?.tensors, path, channels)
}

/// Tensor `latents` of the tensors of file `path`, checked as [`read_latents`] says.
fn latents_of(tensors: &BTreeMap<String, Array>, path: &Path, channels: i32) -> CliResult<Array> {
    let latents = inputs::required_float(tensors, path, "latents")?;
    let shape = latents.shape();
    let fits =
        shape.len() == 4 && shape[0] >= 1 && shape[1] == channels && shape[2] >= 2 && shape[3] >= 2;
    if !fits || shape[2] % 2 != 0 || shape[3] % 2 != 0 {
        return Err(format!(
            "{}: `latents` must be [B, {channels}, h, w] with even h and w, found {shape:?}",
            path.display()
        )
        .into());
    }
    Ok(latents)
}

/// Tensor `name` of a caption file as `[1, L, D]`, if present.
fn read_caption(path: &Path, name: &str) -> CliResult<Option<Caption>> {
    let file = load_safetensors(path)?;
    let Some(feats) = inputs::float_tensor(&file.tensors, path, name)? else {
        return Ok(None);
    };
    let feats: Array = match feats.shape() {
        [_, _] => feats.expand_dims(0),
        [1, _, _] => feats,
        shape => {
            return Err(format!(
                "{}: `{name}` must be [L, cap_feat_dim] or [1, L, cap_feat_dim], found {shape:?}",
                path.display()
            )
            .into())
        }
    };
    let [_, len, _] = feats.dims();
    Ok(Some(Caption { feats, len }))
}
