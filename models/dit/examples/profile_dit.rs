//! Where a transformer step's time and memory go, piece by piece, on the default device:
//! the profile that decides which lever to pull (nsys is absent on the GPU machine, and a
//! compiled MLX graph is one opaque launch sequence).
//!
//! ```text
//! cargo run --release -p dit --example profile_dit -- [turbo|small] [width] [layers] [--save FILE]
//! ```
//!
//! `--save FILE` writes the compiled forward's output (`velocity`) to a safetensors file:
//! two runs, one with `MLX_RS_FUSED_KERNELS=0`, compare the fused kernels with MLX's own.
//!
//! Random weights of the Z-Image-Turbo transformer's shapes (or `small`'s), a 128-token
//! caption, bfloat16 on a GPU (float32 on the CPU). Each row is the median of several
//! evaluated runs after a warm-up, with the peak memory of one run; the whole model's rows
//! come first, then one main block and its parts, then the kernels the block is made of.

use std::time::Instant;

use dit::model::ZImage;
use dit::sequence::fit_captions;
use dit::DitConfig;
use mlx::fast::{self, Mask};
use mlx::nn::{Dense, Linear, MatmulPath, QuantConfig, QuantFormat, QuantizedLinear};
use mlx::ops::Fp8Rows;
use mlx::{memory, random, Array, Device, Dtype, Module};

/// Median milliseconds of `runs` evaluations of `f` after two warm-ups, and the peak
/// memory of the last one.
fn time(runs: usize, f: &dyn Fn() -> Vec<Array>) -> mlx::Result<(f64, usize)> {
    for _ in 0..2 {
        mlx::eval(&f())?;
    }
    mlx::synchronize()?;
    let mut times = Vec::with_capacity(runs);
    let mut peak = 0;
    for _ in 0..runs {
        memory::reset_peak_memory()?;
        let started = Instant::now();
        mlx::eval(&f())?;
        mlx::synchronize()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        peak = memory::peak_memory();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], peak))
}

/// Prints how far `f` computed on the default device is from `f` on the CPU (float32
/// inputs: the fused kernels against MLX's composition of the same computation).
fn against_cpu(what: &str, f: &dyn Fn() -> Array) -> mlx::Result<()> {
    let device = mlx::default_device()?;
    let compare = || -> mlx::Result<f32> {
        let here = f();
        mlx::eval([&here])?;
        mlx::set_default_device(Device::Cpu)?;
        let cpu = f();
        let error = (&cpu - &here).abs().max(mlx::ALL, false) / cpu.abs().max(mlx::ALL, false);
        error.item::<f32>()
    };
    match compare() {
        Ok(error) => println!(
            "{:44} {error:9.2e} {what}: max |{device:?} - cpu| / max |cpu|",
            ""
        ),
        Err(e) => println!("  {what}: the comparison with the CPU failed: {e}"),
    }
    mlx::set_default_device(device)
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let save = match args.iter().position(|a| a == "--save") {
        Some(i) if i + 1 < args.len() => Some(args.drain(i..i + 2).nth(1).unwrap_or_default()),
        Some(_) => return Err("--save takes a file".into()),
        None => None,
    };
    let size = args.first().map_or("turbo", String::as_str);
    let mut config = match size {
        "small" => DitConfig::small(),
        _ => DitConfig::default(),
    };
    let width: i32 = args.get(1).map_or(Ok(1024), |s| s.parse())?;
    if let Some(layers) = args.get(2) {
        config.n_layers = layers.parse()?;
    }
    let dtype = match mlx::default_device()? {
        Device::Cpu => Dtype::F32,
        Device::Gpu(_) => Dtype::Bf16,
    };
    let runs = 5;

    // Random weights: zeros would run faster than real data (and hide wrong indexing).
    let template = ZImage::zeros(&config, dtype);
    let key = random::key(0);
    let shapes: Vec<(Vec<i32>, bool)> = template
        .parameters()
        .iter()
        .map(|(path, a)| (a.shape().to_vec(), path.contains("norm")))
        .collect();
    let keys = random::split(&key, shapes.len() as i32);
    let mut arrays = shapes.iter().zip(keys).map(|((shape, norm), key)| {
        let noise = random::normal(shape, dtype, &key) * 0.02;
        if *norm {
            noise + 1.0
        } else {
            noise
        }
    });
    let model = template.rebuild(&mut arrays);
    drop(template);
    mlx::eval(model.parameters().into_iter().map(|(_, a)| a))?;
    let weights = model.nbytes();
    memory::reset_peak_memory()?;

    let latent = width / 8;
    let latents = random::normal(&[1, config.in_channels, latent, latent], Dtype::F32, &key);
    let cap_feats = random::normal(&[1, 128, config.cap_feat_dim], Dtype::F32, &key);
    let layout = model.layout(&latents, &cap_feats, &[128])?;
    let seq = layout.sequence(&config);
    let cap_feats = fit_captions(&cap_feats, layout.cap_len, dtype);
    let t = Array::full(&[1], 0.5f32, Dtype::F32);
    mlx::eval([&latents, &cap_feats, &t])?;

    println!(
        "{size} transformer ({} main layers, dim {}), {width}x{width}, {} image + {} caption tokens, \
         {dtype} on {:?}; weights {:.2} GiB",
        config.n_layers,
        config.dim,
        layout.x_len,
        layout.cap_len,
        mlx::default_device()?,
        gib(weights)
    );
    println!("{:44} {:>9} {:>10}", "what", "ms", "peak GiB");
    let row = |what: &str, (ms, peak): (f64, usize)| {
        println!("{what:44} {ms:9.2} {:10.2}", gib(peak));
    };

    row(
        "forward, compiled",
        time(
            runs,
            &|| vec![model.predict(&latents, &t, &cap_feats, &seq)],
        )?,
    );
    if let Some(path) = &save {
        let out = model.predict(&latents, &t, &cap_feats, &seq);
        mlx::io::save_safetensors(path, [("velocity", &out)], &Default::default())?;
    }

    // The host's share: building and encoding the step's graph, with the GPU left to run
    // it. MLX keeps at most ten committed command batches in flight and waits for one to
    // finish before committing more, so where the GPU is the slower side this reads as the
    // whole step; at a small width (little GPU work) it is the host's own cost.
    let encode = {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            mlx::synchronize()?;
            let started = Instant::now();
            let out = model.predict(&latents, &t, &cap_feats, &seq);
            mlx::async_eval([&out])?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            mlx::eval([&out])?;
        }
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    println!(
        "{:44} {encode:9.2}",
        "forward, compiled: host time to encode"
    );
    // Steps back to back, each one's graph built and encoded while the GPU runs the one
    // before: what the GPU idles at a synchronous step boundary is the difference.
    let pipelined = {
        let chained = 4;
        mlx::synchronize()?;
        let started = Instant::now();
        let mut x = latents.clone();
        for _ in 0..chained {
            let v = model.predict(&x, &t, &cap_feats, &seq);
            x = &x - v.astype(Dtype::F32) * 0.01;
            mlx::async_eval([&x])?;
        }
        mlx::eval([&x])?;
        started.elapsed().as_secs_f64() * 1e3 / chained as f64
    };
    println!(
        "{:44} {pipelined:9.2}",
        "forward, compiled, 4 pipelined (each)"
    );
    mlx::compile::set_eager(true);
    row(
        "forward, eager",
        time(
            runs,
            &|| vec![model.predict(&latents, &t, &cap_feats, &seq)],
        )?,
    );
    mlx::compile::set_eager(false);

    let embedded = model.embed(&latents, &t, &cap_feats, &seq);
    let (tokens, adaln) = (embedded.tokens, embedded.adaln);
    mlx::eval([&tokens, &adaln])?;
    row(
        "embed + refiners",
        time(runs, &|| {
            let e = model.embed(&latents, &t, &cap_feats, &seq);
            vec![e.tokens, e.adaln]
        })?,
    );
    row(
        "main layers, one evaluation",
        time(runs, &|| vec![model.main_layers(&tokens, &adaln, &seq)])?,
    );
    let rope = seq.joint_rope();
    mlx::eval([&rope.cos, &rope.sin])?;
    row(
        "main layers, evaluated block by block",
        time(1, &|| {
            let mut x = tokens.clone();
            for block in &model.layers {
                x = block.forward(&x, seq.joint_mask.as_ref(), &rope, Some(&adaln));
                // A graph break per block: what bounds the step's working set.
                let _ = mlx::eval([&x]);
            }
            vec![x]
        })?,
    );

    let block = &model.layers[0];
    row(
        "one main block",
        time(runs, &|| {
            vec![block.forward(&tokens, seq.joint_mask.as_ref(), &rope, Some(&adaln))]
        })?,
    );
    let attn_in = block.modulated_input(&tokens, Some(&adaln));
    mlx::eval([&attn_in])?;
    row(
        "  attention (qkv, norms, rope, sdpa, out)",
        time(runs, &|| {
            vec![block
                .attention
                .forward(&attn_in, seq.joint_mask.as_ref(), &rope)]
        })?,
    );
    row(
        "  feed-forward",
        time(runs, &|| vec![block.feed_forward.forward(&attn_in)])?,
    );

    let [b, l, d] = tokens.dims();
    let heads = config.n_heads;
    let head_dim = d / heads;
    let qkv: Vec<Array> = (0..3)
        .map(|i| random::normal(&[b, heads, l, head_dim], dtype, &random::key(10 + i)))
        .collect();
    mlx::eval(&qkv)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    row(
        "  sdpa, no mask",
        time(runs, &|| {
            vec![fast::scaled_dot_product_attention(
                &qkv[0],
                &qkv[1],
                &qkv[2],
                scale,
                Mask::None,
            )]
        })?,
    );
    let mask = Array::ones(&[b, 1, 1, l], Dtype::Bool);
    row(
        "  sdpa, boolean key mask",
        time(runs, &|| {
            vec![fast::scaled_dot_product_attention(
                &qkv[0],
                &qkv[1],
                &qkv[2],
                scale,
                Mask::Array(&mask),
            )]
        })?,
    );
    let x4 = attn_in.reshape(&[b, l, heads, head_dim]);
    row(
        "  rope table apply (one of q, k)",
        time(runs, &|| vec![rope.apply(&x4)])?,
    );
    let rms_w = Array::ones(&[head_dim], dtype);
    row(
        "  per-head RMSNorm + rope (one of q, k)",
        time(runs, &|| vec![rope.apply_after_norm(&x4, &rms_w, 1e-5)])?,
    );
    // The same in float32 on the CPU, where it is composed of MLX's operations.
    against_cpu("per-head RMSNorm + rope", &|| {
        rope.apply_after_norm(&x4.astype(Dtype::F32), &rms_w, 1e-5)
    })?;

    // The fused residual-and-norms step against the CPU's composition, in float32.
    let norm = |seed: u64| mlx::nn::RmsNorm {
        weight: random::uniform(0.5, 1.5, &[d], Dtype::F32, &random::key(seed)),
        eps: 1e-5,
    };
    let (norm_a, norm_b) = (norm(30), norm(31));
    let modulation = |seed: u64| random::normal(&[b, 1, d], Dtype::F32, &random::key(seed));
    let (gate, scale) = (modulation(32), modulation(33));
    let (x32, y32) = (tokens.astype(Dtype::F32), attn_in.astype(Dtype::F32) * 3.0);
    let residual = || {
        let (h, next) = norm_a.add_normed_then(&x32, &y32, Some(&gate), &norm_b, Some(&scale));
        mlx::concatenate(&[&h, &next], -1)
    };
    against_cpu("residual + norms", &residual)?;
    let (x16, y16) = (tokens.clone(), attn_in.clone());
    let (norm_a, norm_b) = (&block.attention_norm2, &block.ffn_norm1);
    let gate16 = gate.astype(dtype);
    let scale16 = scale.astype(dtype);
    row(
        "  residual + two norms + modulation",
        time(runs, &|| {
            let (h, next) =
                norm_a.add_normed_then(&x16, &y16, Some(&gate16), norm_b, Some(&scale16));
            vec![h, next]
        })?,
    );
    let w = random::normal(&[d, d], dtype, &random::key(20));
    let w3 = random::normal(&[3 * d, d], dtype, &random::key(21));
    mlx::eval([&w, &w3])?;
    let flops = |m: f64, n: f64, k: f64, ms: f64| 2.0 * m * n * k / (ms * 1e-3) / 1e12;
    let (ms, peak) = time(runs, &|| vec![attn_in.matmul(&w.t())])?;
    row("  one d x d projection", (ms, peak));
    println!(
        "{:44} {:9.1} TFLOP/s",
        "",
        flops(l as f64, d as f64, d as f64, ms)
    );
    let (ms3, peak3) = time(runs, &|| (0..3).map(|_| attn_in.matmul(&w.t())).collect())?;
    row("  q, k, v as three projections", (ms3, peak3));
    let (msf, peakf) = time(runs, &|| vec![attn_in.matmul(&w3.t())])?;
    row("  q, k, v as one fused projection", (msf, peakf));
    row(
        "  per-head RMSNorm",
        time(runs, &|| vec![fast::rms_norm(&x4, Some(&rms_w), 1e-5)])?,
    );

    // 8-bit feed-forward-sized products: both paths, at the step's token count.
    let hidden = config.ffn_hidden();
    let source = Dense {
        weight: random::normal(&[hidden, d], dtype, &random::key(22)) * 0.02,
        bias: None,
    };
    let dense = Linear::Dense(source.clone());
    mlx::eval([&source.weight])?;
    row(
        &format!("  {hidden} x {d} projection, {dtype}"),
        time(runs, &|| vec![dense.forward(&attn_in)])?,
    );
    // fp8's parts: E4M3 weights with a scale per output channel, activations with one per
    // token, the product Hopper's FP8 tensor cores run.
    let w_fp8 = Fp8Rows::quantize(&source.weight);
    let x2 = attn_in.reshape(&[b * l, d]);
    let x_fp8 = Fp8Rows::quantize(&x2);
    mlx::eval([&w_fp8.values, &w_fp8.scales, &x_fp8.values, &x_fp8.scales])?;
    let kernel = if mlx::ops::fp8_kernel(hidden, d) {
        "cuBLASLt FP8"
    } else {
        "dequantized"
    };
    let (ms, peak) = time(runs, &|| vec![mlx::ops::fp8_matmul(&x_fp8, &w_fp8, dtype)])?;
    row(
        &format!("  the same, fp8 product alone ({kernel})"),
        (ms, peak),
    );
    println!(
        "{:44} {:9.1} TFLOP/s",
        "",
        flops((b * l) as f64, hidden as f64, d as f64, ms)
    );
    row(
        "  the same, quantizing its input alone",
        time(runs, &|| {
            let q = Fp8Rows::quantize(&x2);
            vec![q.values, q.scales]
        })?,
    );
    let reference = dense.forward(&attn_in).astype(Dtype::F32);
    for path in [MatmulPath::Kernel, MatmulPath::Dequantize] {
        let layer = QuantizedLinear::from_dense(&source, QuantConfig::new(QuantFormat::Fp8), path)?;
        let y = Linear::Quantized(layer)
            .forward(&attn_in)
            .astype(Dtype::F32);
        let error =
            (y - &reference).abs().max(mlx::ALL, false) / reference.abs().max(mlx::ALL, false);
        println!(
            "{:44} {:9.2e} max |fp8 by {} - {dtype}| / max |{dtype}|",
            "",
            error.item::<f32>()?,
            path.name_for(QuantFormat::Fp8),
        );
    }

    // fp8 first: MLX's quantized_matmul kernels take seconds at this size on a GPU.
    let mut formats = QuantFormat::ALL.to_vec();
    formats.sort_by_key(|&f| f != QuantFormat::Fp8);
    for format in formats {
        for path in [MatmulPath::Kernel, MatmulPath::Dequantize] {
            let layer = Linear::Quantized(QuantizedLinear::from_dense(
                &source,
                QuantConfig::new(format),
                path,
            )?);
            mlx::eval(layer.parameters().into_iter().map(|(_, a)| a))?;
            match time(runs, &|| vec![layer.forward(&attn_in)]) {
                Ok(timing) => row(
                    &format!("  the same, {format} by {}", path.name_for(format)),
                    timing,
                ),
                Err(e) => println!("  the same, {format} by {}: {e}", path.name_for(format)),
            }
        }
    }
    Ok(())
}
