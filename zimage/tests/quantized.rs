//! Quantized linear layers: the error of each format against a bound derived from the
//! format, the two matmul paths against each other, checkpoints and pipelines written by
//! `dit quantize` against quantizing in memory, and the command's reports and errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dit::weights::{self, LoadOptions, ModelSource, WEIGHTS_FILE};
use dit::{DitConfig, ZImage};
use mlx::io::{load_safetensors, save_safetensors};
use mlx::nn::quant::{self, MatmulPath, QuantConfig, QuantFormat};
use mlx::nn::{Dense, Linear, QuantizedLinear};
use mlx::ops::{Fp8Rows, Quantized};
use mlx::{random, Array, Dtype};
use serde_json::Value;

mod common;
use common::{fail, floats, path, relative_error, succeed};

// === helpers ==================================================================================

/// `[rows, cols]` normal weights whose rows have scales spread over four decades, so
/// groups see very different ranges, plus a few outliers as trained weights have.
fn weights(rows: i32, cols: i32, seed: u64) -> Array {
    let noise = random::normal(&[rows, cols], Dtype::F32, &random::key(seed));
    let row_scale: Vec<f32> = (0..rows)
        .map(|r| 10f32.powf(-3.0 + 4.0 * r as f32 / rows.max(2) as f32))
        .collect();
    let mut w = floats(&(noise * Array::from_slice(&row_scale, &[rows, 1])));
    for i in (0..w.len()).step_by(97) {
        w[i] *= 8.0;
    }
    Array::from_slice(&w, &[rows, cols])
}

const SHAPES: [(i32, i32); 4] = [(1, 32), (16, 64), (48, 96), (256, 768)];

/// A tiny forward batch: latents [1, 16, 8, 8], t [1], 9 caption tokens of the tiny
/// model's 64 features.
fn write_inputs(file: &Path) {
    let latents = random::normal(&[1, 16, 8, 8], Dtype::F32, &random::key(11));
    let t = Array::from_slice(&[0.5f32], &[1]);
    let caps = random::normal(&[1, 9, 64], Dtype::F32, &random::key(12));
    save_safetensors(
        file,
        [
            ("latents", &latents),
            ("timestep", &t),
            ("cap_feats", &caps),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
}

fn forward_out(file: &Path) -> Vec<f32> {
    floats(&load_safetensors(file).unwrap().tensors["out"])
}

fn tiny_forward(options: LoadOptions) -> Vec<f32> {
    let loaded = weights::load(&ModelSource::parse("tiny"), options).unwrap();
    let latents = random::normal(&[1, 16, 8, 8], Dtype::F32, &random::key(11));
    let t = Array::from_slice(&[0.5f32], &[1]);
    let caps = random::normal(&[1, 9, 64], Dtype::F32, &random::key(12));
    floats(&loaded.model.forward(&latents, &t, &caps, &[9]).unwrap())
}

/// max|a − b| / max|b|.
/// `dit quantize --model <model> --out <out> --mode <mode>`; its stdout.
fn quantize(model: &str, out: &Path, mode: &str) -> String {
    succeed(&[
        "quantize",
        "--model",
        model,
        "--out",
        path(out),
        "--mode",
        mode,
    ])
}

// === the formats' error bounds ================================================================

/// affine as MLX quantizes it (`quantize` in mlx/backend/cpu/quantized.cpp), with `n =
/// 2^bits − 1` steps: per group, `delta = (max − min) / n`; the endpoint of larger
/// magnitude, `edge`, is the bias and is hit exactly: `scale = edge / rint(edge / ±delta)`,
/// signed so that `q = clamp(rint((w − bias) / scale), 0, n)`.
///
/// An element that rounds inside `0..=n` errs by at most `|scale| / 2`. Because `scale` is
/// `edge / rint(edge / delta)` rather than `delta`, it can be slightly smaller than `delta`
/// (`|edge| ≥ range / 2` makes `rint(edge / delta)` at least `n / 2`), and then
/// `n · |scale|` falls short of the range: the far endpoint is clamped to `q = n` and errs
/// by `range − n · |scale|`. So the per-group bound is `max(|scale| / 2, range − n ·
/// |scale|)` (at most `delta`), plus float32 rounding of `(w − bias) / scale` and `scale ·
/// q + bias`: a few ulps of the group's magnitude. Checked for both widths and every group
/// size.
#[test]
fn affine_round_trip_error_is_within_half_a_step_or_the_clamped_range() {
    for format in [QuantFormat::Affine4, QuantFormat::Affine8] {
        for &group_size in format.group_sizes() {
            let config = QuantConfig::with_group_size(format, group_size).unwrap();
            affine_round_trip(config);
        }
    }
}

/// `w` quantized by MLX in one of its formats.
fn packed(config: QuantConfig, w: &Array) -> Quantized {
    let mode = config.format.mlx_mode().expect("one of MLX's formats");
    Quantized::new(w, config.group_size, config.bits(), mode).unwrap()
}

fn affine_round_trip(config: QuantConfig) {
    let steps = ((1 << config.bits()) - 1) as f32;
    let group = config.group_size as usize;
    for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
        if cols % config.group_size != 0 {
            continue;
        }
        let w = weights(rows, cols, 100 + i as u64);
        let q = packed(config, &w);
        assert_eq!(q.weights.shape(), [rows, cols * config.bits() / 32]);
        let back = floats(&q.dequantize(Some(Dtype::F32)));
        let scales = floats(&q.scales);
        let w = floats(&w);
        let mut clamped_groups = 0;
        for (g, values) in w.chunks(group).enumerate() {
            let (lo, hi) = values
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let range = hi - lo;
            let step = scales[g].abs();
            let rounding = 4.0 * f32::EPSILON * (range + lo.abs().max(hi.abs()));
            let bound = (step / 2.0).max(range - steps * step) + rounding;
            if range - steps * step > step / 2.0 {
                clamped_groups += 1;
            }
            assert!(bound <= range / steps + rounding, "bound beyond delta");
            let start = g * group;
            for (j, &v) in values.iter().enumerate() {
                let err = (v - back[start + j]).abs();
                assert!(
                    err <= bound,
                    "{config} [{rows}, {cols}] group {g}: |{v} - {}| = {err:e} > {bound:e} (scale {step:e}, range {range:e})",
                    back[start + j]
                );
            }
        }
        eprintln!(
            "{config} [{rows}, {cols}]: {clamped_groups} of {} groups clamp their far end",
            w.len() / group
        );
    }
}

/// A small float format: `mantissa` bits, the largest finite value, and the spacing of
/// its subnormals.
struct Minifloat {
    mantissa: i32,
    max: f32,
    subnormal_spacing: f32,
}

/// FP8 E4M3 (4 exponent bits, bias 7): largest 448, smallest normal 2^-6.
const E4M3: Minifloat = Minifloat {
    mantissa: 3,
    max: 448.0,
    subnormal_spacing: 1.0 / 512.0,
};
/// FP4 E2M1 (2 exponent bits, bias 1): 0, 0.5, 1, 1.5, 2, 3, 4, 6.
const E2M1: Minifloat = Minifloat {
    mantissa: 1,
    max: 6.0,
    subnormal_spacing: 0.5,
};

/// An E4M3 byte's value (nvfp4's scales).
fn e4m3(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((byte >> 3) & 0xf);
    let mantissa = f32::from(byte & 0x7);
    sign * match exponent {
        0 => mantissa / 8.0 * 2f32.powi(-6),
        e => (1.0 + mantissa / 8.0) * 2f32.powi(e - 7),
    }
}

/// The microscaling formats: each group shares a scale `s` (a power of two `2^(e − 127)`
/// from an E8M0 byte for mxfp4 and mxfp8, an E4M3 number for nvfp4), and each element is
/// `s` times an element-format number.
///
/// - Rounding `y = w / s` to the nearest element-format number: a normal `|y|` in `[2^k,
///   2^(k+1))` has spacing `2^(k − m)` (`m` mantissa bits), so errs by at most `2^-(m+1) ·
///   |y|`; a subnormal errs by at most half the subnormal spacing.
/// - A `|y|` past the format's largest value saturates to it, erring by the excess. MLX
///   picks E8M0 scales so nothing saturates; an E4M3 scale is `max|w| / 6` rounded to
///   nearest, so saturation is at most its rounding: `2^-4` relative, or half the E4M3
///   subnormal spacing (2^-10) for groups whose `max|w| / 6` is below 2^-6. Without the
///   per-tensor global scale MLX's nvfp4 can take (not used here), a group with `max|w|
///   < 6 · 2^-10` gets a zero scale: it is flushed to zero, which the bound covers as
///   saturation.
/// - With a power-of-two `s`, `w / s` and `s · y` are exact in float32; an E4M3 `s` adds
///   two float32 roundings.
#[test]
fn microscaled_round_trip_error_is_within_rounding_of_the_group_scale() {
    for format in [QuantFormat::Mxfp8, QuantFormat::Mxfp4, QuantFormat::Nvfp4] {
        let config = QuantConfig::new(format);
        let (element, power_of_two) = match format {
            QuantFormat::Mxfp8 => (E4M3, true),
            QuantFormat::Mxfp4 => (E2M1, true),
            _ => (E2M1, false),
        };
        let group = config.group_size as usize;
        for (i, &(rows, cols)) in SHAPES.iter().enumerate() {
            let w = weights(rows, cols, 200 + i as u64);
            let q = packed(config, &w);
            assert_eq!(q.weights.shape(), [rows, cols * config.bits() / 32]);
            assert_eq!(q.scales.dtype(), Dtype::U8);
            assert!(q.biases.is_none());
            let back = floats(&q.dequantize(Some(Dtype::F32)));
            let scales: Vec<f32> = q
                .scales
                .to_vec::<u8>()
                .unwrap()
                .into_iter()
                .map(|b| {
                    if power_of_two {
                        2f32.powi(i32::from(b) - 127)
                    } else {
                        e4m3(b)
                    }
                })
                .collect();
            let w = floats(&w);
            let relative = 2f32.powi(-(element.mantissa + 1));
            let (mut worst, mut saturated) = (0f32, 0);
            for (g, values) in w.chunks(group).enumerate() {
                let s = scales[g];
                let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
                // E4M3 rounds `amax / 6` to within 2^-4 of it, or within half its
                // subnormal spacing below 2^-6 (to zero below 2^-10: the group is
                // flushed).
                let reach = if power_of_two {
                    s
                } else {
                    (s * (1.0 + 1.0 / 16.0)).max(s + E4M3.subnormal_spacing / 2.0)
                };
                assert!(
                    amax <= element.max * reach * (1.0 + f32::EPSILON),
                    "{format} group {g}: max {amax} saturates scale {s}"
                );
                let start = g * group;
                for (j, &v) in values.iter().enumerate() {
                    let err = (v - back[start + j]).abs();
                    let excess = (v.abs() - element.max * s).max(0.0);
                    saturated += usize::from(excess > 0.0);
                    let float32 = if power_of_two {
                        0.0
                    } else {
                        2.0 * f32::EPSILON * v.abs()
                    };
                    let bound = (relative * v.abs()).max(element.subnormal_spacing / 2.0 * s)
                        + excess
                        + float32;
                    assert!(
                        err <= bound,
                        "{format} [{rows}, {cols}] group {g}: |{v} - {}| = {err:e} > {bound:e} (scale {s:e})",
                        back[start + j]
                    );
                    if v.abs() >= s {
                        worst = worst.max(err / v.abs());
                    }
                }
            }
            eprintln!(
                "{format} [{rows}, {cols}]: worst relative error of elements ≥ the scale {worst:.4}, {saturated} saturated"
            );
        }
    }
}

// === the two matmul paths =====================================================================

/// The paths differ only in float32 summation order (the kernel sums `x · q` and applies
/// the scale per group; the other path multiplies the dequantized matrix with BLAS). Each
/// result is within `γ_K · Σ|x||ŵ|` of the exact product of `x` and the dequantized
/// weight (`γ_K = K·u / (1 − K·u)`, `u = 2^-24`, plus a few roundings of the scale and
/// bias), so they agree within twice that, per output.
#[test]
fn quantized_matmul_and_dequantize_paths_agree_per_layer() {
    for format in QuantFormat::ALL.map(QuantConfig::new) {
        // fp8's kernel also quantizes the activations: `fp8_kernel_path_...` below.
        if format.format == QuantFormat::Fp8 {
            continue;
        }
        if !quant::kernel_available(format, Dtype::F32) {
            eprintln!("no {format} kernel on this device: nothing to compare");
            continue;
        }
        for (i, &(out, inp)) in SHAPES.iter().enumerate() {
            if format.unquantizable(inp).is_some() {
                continue;
            }
            let dense = Dense {
                weight: weights(out, inp, 300 + i as u64),
                bias: Some(random::normal(&[out], Dtype::F32, &random::key(7))),
            };
            let layer = |matmul| {
                Linear::Quantized(QuantizedLinear::from_dense(&dense, format, matmul).unwrap())
            };
            let x = random::normal(&[2, 5, inp], Dtype::F32, &random::key(400 + i as u64));
            let kernel = floats(&layer(MatmulPath::Kernel).forward(&x));
            let dequantized = floats(&layer(MatmulPath::Dequantize).forward(&x));

            let Linear::Quantized(q) = layer(MatmulPath::Dequantize) else {
                unreachable!()
            };
            let magnitude = floats(&x.abs().matmul(&q.dequantize().abs().t()));
            let u = f32::EPSILON / 2.0;
            let gamma = (inp as f32 + 4.0) * u / (1.0 - (inp as f32 + 4.0) * u);
            for (k, (a, b)) in kernel.iter().zip(&dequantized).enumerate() {
                let bound = 2.0 * gamma * magnitude[k] + 4.0 * u * a.abs();
                assert!(
                    (a - b).abs() <= bound,
                    "{format} [{out}, {inp}] output {k}: {a} vs {b} (bound {bound:e})"
                );
            }
        }
    }
}

/// fp8's kernel path is the product of the activations quantized to E4M3 per token (each
/// row's largest magnitude over 448) and the weight per output channel, plus the bias: on
/// the CPU the float32 product of the dequantized operands, on an FP8 GPU cuBLASLt's FP8
/// kernel (whose fast accumulation keeps about 2^-13 of each sum). Checked against that
/// product computed here in float64 from the quantized rows, for a 3-D input (rows across
/// the batch), and for its distance to the float layer: FP8's rounding of both operands, a
/// few percent of the output.
#[test]
fn fp8_kernel_path_multiplies_per_token_quantized_activations() {
    let config = QuantConfig::new(QuantFormat::Fp8);
    for (i, &(out, inp)) in SHAPES.iter().enumerate() {
        if config.unquantizable(inp).is_some() {
            continue;
        }
        let dense = Dense {
            weight: weights(out, inp, 500 + i as u64),
            bias: Some(random::normal(&[out], Dtype::F32, &random::key(8))),
        };
        let layer = QuantizedLinear::from_dense(&dense, config, MatmulPath::Kernel).unwrap();
        let x = random::normal(&[2, 5, inp], Dtype::F32, &random::key(600 + i as u64));
        let got = floats(&Linear::Quantized(layer.clone()).forward(&x));

        let xs = floats(&Fp8Rows::quantize(&x.reshape(&[10, inp])).dequantize(Dtype::F32));
        let ws = floats(&layer.dequantize());
        let bias = floats(dense.bias.as_ref().unwrap());
        let tolerance = if mlx::ops::fp8_kernel(out, inp) {
            1e-3
        } else {
            1e-5
        };
        let (out, inp) = (out as usize, inp as usize);
        for (k, g) in got.iter().enumerate() {
            let (row, col) = (&xs[k / out * inp..][..inp], &ws[k % out * inp..][..inp]);
            let terms = row
                .iter()
                .zip(col)
                .map(|(a, b)| f64::from(*a) * f64::from(*b));
            let (exact, magnitude) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
            let expected = exact + f64::from(bias[k % out]);
            assert!(
                (f64::from(*g) - expected).abs() <= tolerance * magnitude + 1e-6,
                "[{out}, {inp}] output {k}: {g} vs {expected}"
            );
        }
        let dense_out = floats(&Linear::Dense(dense.clone()).forward(&x));
        let err = relative_error(&got, &dense_out);
        assert!(
            err > 1e-4 && err < 0.1,
            "[{out}, {inp}]: {err} from the float layer"
        );
    }
}

/// Through the whole tiny model (four blocks, normalizations, attention softmax) the
/// per-layer differences above compound, but stay at float32 noise.
#[test]
fn quantized_matmul_and_dequantize_paths_agree_through_the_model() {
    for format in QuantFormat::ALL.map(QuantConfig::new) {
        if format.format == QuantFormat::Fp8 || !quant::kernel_available(format, Dtype::F32) {
            continue;
        }
        let run = |matmul| {
            tiny_forward(LoadOptions {
                quantize: Some(format),
                matmul: Some(matmul),
                ..LoadOptions::from(Dtype::F32)
            })
        };
        let err = relative_error(&run(MatmulPath::Kernel), &run(MatmulPath::Dequantize));
        eprintln!("{format}: kernel vs dequantize, relative error {err:.2e}");
        assert!(err <= 1e-5, "{format}: relative error {err}");
    }
}

/// Quantization changes the output by what its width should: clearly more than float
/// noise, far less than the output itself, and the 4-bit formats clearly more than the
/// 8-bit ones (a step 16 times coarser). affine8 errs less than mxfp8 on these normal
/// weights: its step is a group's range / 255 (~amax / 100 for 32 normal samples), while
/// E4M3 rounds a typical element (~amax / 2.5) to 3 mantissa bits, up to 2^-4 of it
/// (~amax / 40); likewise affine4 (range / 15) errs less than mxfp4 (1 mantissa bit, and
/// a power-of-two scale that leaves up to half the range unused).
#[test]
fn quantized_models_stay_close_to_the_dense_one() {
    let dense = tiny_forward(LoadOptions::from(Dtype::F32));
    let error = |format| {
        let quantized = tiny_forward(LoadOptions {
            quantize: Some(QuantConfig::new(format)),
            ..LoadOptions::from(Dtype::F32)
        });
        let err = relative_error(&quantized, &dense);
        eprintln!("{format}: relative error against float32 {err:.2e}");
        assert!(err > 1e-4 && err < 0.5, "{format}: relative error {err}");
        err
    };
    let (mxfp8, affine8) = (error(QuantFormat::Mxfp8), error(QuantFormat::Affine8));
    assert!(affine8 < mxfp8, "affine8 {affine8} vs mxfp8 {mxfp8}");
    // E4M3 with a scale per channel rather than per 32: about mxfp8's error.
    let fp8 = error(QuantFormat::Fp8);
    let (mxfp4, affine4) = (error(QuantFormat::Mxfp4), error(QuantFormat::Affine4));
    assert!(affine4 < mxfp4, "affine4 {affine4} vs mxfp4 {mxfp4}");
    let nvfp4 = error(QuantFormat::Nvfp4);
    for four in [mxfp4, affine4, nvfp4] {
        assert!(
            four > 2.0 * mxfp8.max(affine8).max(fp8),
            "4-bit {four} vs 8-bit"
        );
    }
}

// === checkpoints ==============================================================================

/// `dit quantize` writes exactly what `--fp8` computes in memory: the same float32
/// weights quantized by the same op, stored losslessly (packed words, E8M0 bytes, float32
/// affine scales), run by the same graph. So the outputs are bit-identical.
#[test]
fn a_quantized_checkpoint_runs_exactly_like_in_memory_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    write_inputs(&inputs);
    for format in QuantFormat::ALL {
        let mode = format.name();
        let model = dir.path().join(mode);
        let stdout = quantize("tiny", &model, mode);
        assert!(stdout.contains("all_final_layer.2-1.linear"), "{stdout}");
        assert!(stdout.contains("layers.0.feed_forward.w2"), "{stdout}");

        let from_file = dir.path().join(format!("{mode}-file.safetensors"));
        let in_memory = dir.path().join(format!("{mode}-memory.safetensors"));
        let forward = |model: &str, out: &Path, extra: &[&str]| {
            let mut args = vec!["forward", "--model", model, "--inputs", path(&inputs)];
            args.extend(["--out", path(out)]);
            args.extend(extra);
            succeed(&args);
            forward_out(out)
        };
        let a = forward(path(&model), &from_file, &[]);
        // `--fp8` is `--quantize`'s older name.
        let flag = if format == QuantFormat::Mxfp8 {
            "--fp8"
        } else {
            "--quantize"
        };
        let b = forward("tiny", &in_memory, &[flag, mode]);
        assert!(
            a == b,
            "{mode}: relative difference {:e}",
            relative_error(&a, &b)
        );
    }
}

/// The tensors and `config.json` `dit quantize` writes, for a bfloat16 checkpoint: packed
/// weights, scales (and affine biases) per quantized layer, dense tensors still bfloat16;
/// and the sampling files next to the weights, copied.
#[test]
fn quantize_writes_the_documented_layout() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("bf16");
    succeed(&[
        "init",
        "--model",
        "tiny",
        "--out",
        path(&pipeline),
        "--dtype",
        "bf16",
    ]);
    let bf16 = pipeline.join("transformer");
    let scheduler = r#"{"shift": 3.0, "use_dynamic_shifting": false}"#;
    std::fs::write(bf16.join("scheduler_config.json"), scheduler).unwrap();
    for format in QuantFormat::ALL {
        let out = dir.path().join(format.name());
        quantize(path(&bf16), &out, format.name());
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let expected = QuantConfig::new(format);
        let mut record = serde_json::json!({"mode": format.name(), "bits": format.bits()});
        if format != QuantFormat::Fp8 {
            record["group_size"] = expected.group_size.into();
        }
        assert_eq!(config["quantization"], record);
        let tensors = load_safetensors(out.join(WEIGHTS_FILE)).unwrap().tensors;
        let get = |name: &str| tensors.get(name).unwrap_or_else(|| panic!("no {name}"));
        // to_q is [64, 64]: 64 · bits / 32 words and 64 / group size scales per row; for
        // fp8 64 bytes and one float32 scale per row.
        let q = "layers.1.attention.to_q";
        let weight = get(&format!("{q}.weight"));
        let scale = get(&format!("{q}.weight_scale"));
        let modulation = "layers.0.adaLN_modulation.0";
        assert_eq!(get(&format!("{modulation}.bias")).dtype(), Dtype::Bf16);
        if format == QuantFormat::Fp8 {
            assert_eq!((weight.dtype(), weight.shape()), (Dtype::U8, &[64, 64][..]));
            assert_eq!((scale.dtype(), scale.shape()), (Dtype::F32, &[64][..]));
        } else {
            assert_eq!(weight.dtype(), Dtype::U32);
            assert_eq!(weight.shape(), [64, 2 * format.bits()]);
            assert_eq!(scale.shape(), [64, 64 / expected.group_size]);
        }
        if format == QuantFormat::Fp8 {
            assert!(!tensors.keys().any(|k| k.ends_with(".weight_qbias")));
        } else if format.has_biases() {
            assert_eq!(scale.dtype(), Dtype::Bf16);
            assert_eq!(get(&format!("{q}.weight_qbias")).dtype(), Dtype::Bf16);
        } else {
            assert_eq!(scale.dtype(), Dtype::U8);
            assert!(!tensors.keys().any(|k| k.ends_with(".weight_qbias")));
        }
        for dense in [
            "all_final_layer.2-1.linear.weight",
            "layers.0.feed_forward.w2.weight",
        ] {
            assert_eq!(get(dense).dtype(), Dtype::Bf16, "{dense}");
            assert!(!tensors.contains_key(&dense.replace(".weight", ".weight_scale")));
        }
        assert_eq!(get("x_pad_token").dtype(), Dtype::Bf16);
        assert_eq!(get("layers.0.attention_norm1.weight").dtype(), Dtype::Bf16);

        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap();
        assert_eq!(read(&out, "scheduler_config.json"), scheduler);
        let coefficients = "teacache_coefficients.json";
        assert_eq!(read(&out, coefficients), read(&bf16, coefficients));
    }
}

/// The linear layers of the tiny model quantization with `config` takes: every one but
/// the final projection and the feed-forwards' `w2` (170 input features).
fn tiny_quantized_shapes(config: &QuantConfig) -> Vec<(usize, usize)> {
    let mut model = ZImage::zeros(&DitConfig::tiny(), Dtype::F32);
    model
        .linears_mut()
        .into_iter()
        .filter(|(path, linear)| ZImage::keeps_dense(path, linear, config).is_none())
        .map(|(_, linear)| {
            let (out, inp) = linear.features();
            (out as usize, inp as usize)
        })
        .collect()
}

#[test]
fn info_reports_the_mode_counts_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let dense =
        serde_json::from_str::<Value>(succeed(&["info", "--model", "tiny", "--json"]).trim())
            .unwrap();
    assert_eq!(dense["quantization"]["mode"], "none");
    assert_eq!(dense["quantization"]["quantized_layers"], 0);
    assert_eq!(dense["quantization"]["dense_layers"], 37);
    let dense_bytes = dense["weights_bytes"].as_u64().unwrap();
    assert_eq!(dense["quantization"]["dense_bytes"], dense_bytes);

    for format in QuantFormat::ALL {
        let config = QuantConfig::new(format);
        let shapes = tiny_quantized_shapes(&config);
        assert_eq!(shapes.len(), 32);
        let model = dir.path().join(format.name());
        quantize("tiny", &model, format.name());
        let info: Value =
            serde_json::from_str(succeed(&["info", "--model", path(&model), "--json"]).trim())
                .unwrap();
        let q = &info["quantization"];
        assert_eq!(q["mode"], format.name());
        let group_size = match format {
            QuantFormat::Fp8 => Value::Null,
            _ => config.group_size.into(),
        };
        assert_eq!(
            (&q["group_size"], &q["bits"]),
            (&group_size, &config.bits().into())
        );
        assert_eq!(
            (&q["quantized_layers"], &q["dense_layers"]),
            (&32.into(), &5.into())
        );
        // Which path runs is decided by timing both, so only the set of paths is certain:
        // the kernel can win only where the device has one.
        let paths: &[MatmulPath] = if quant::kernel_available(config, Dtype::F32) {
            &[MatmulPath::Kernel, MatmulPath::Dequantize]
        } else {
            &[MatmulPath::Dequantize]
        };
        let names: Vec<&str> = paths.iter().map(|path| path.name_for(format)).collect();
        assert!(
            names.iter().any(|name| q["matmul"] == *name),
            "{format}: {} is none of {names:?}",
            q["matmul"]
        );
        assert_eq!(
            q["dense_bytes"], dense_bytes,
            "{format}: the same weights, dense"
        );
        assert_eq!(info["parameters"], dense["parameters"]);

        // Per quantized float32 element: 4 bytes dense; bits / 8 bytes packed plus, per
        // group, one byte scale (the microscaling formats) or a float32 scale and bias
        // (affine), or for fp8 a float32 scale per row.
        let per_group_extra = if format.has_biases() { 8 } else { 1 };
        let saved: usize = shapes
            .iter()
            .map(|&(out, inp)| {
                let scales = match config.group_size {
                    quant::PER_CHANNEL => out * 4,
                    group => out * inp / group as usize * per_group_extra,
                };
                out * inp * 4 - out * inp * config.bits() as usize / 8 - scales
            })
            .sum();
        let weights_bytes = q["weights_bytes"].as_u64().unwrap();
        assert_eq!(weights_bytes, dense_bytes - saved as u64, "{format}");
        assert_eq!(info["weights_bytes"], weights_bytes);
        assert_eq!(info["stored_bytes"], weights_bytes);
    }
}

// === errors ===================================================================================

#[test]
fn quantizing_twice_and_unknown_modes_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("mxfp8");
    quantize("tiny", &model, "mxfp8");

    let again = fail(&[
        "quantize",
        "--model",
        path(&model),
        "--out",
        path(&d.join("again")),
        "--mode",
        "affine8",
    ]);
    assert!(again.contains("already quantized (mxfp8)"), "{again}");
    assert!(!d.join("again").exists());

    let inputs = d.join("inputs.safetensors");
    write_inputs(&inputs);
    let out = d.join("out.safetensors");
    let forward = [
        "forward",
        "--model",
        path(&model),
        "--inputs",
        path(&inputs),
        "--out",
        path(&out),
    ];
    let err = fail(&[&forward[..], &["--fp8", "affine8"]].concat());
    assert!(err.contains("already quantized (mxfp8)"), "{err}");
    let err = fail(&[
        "generate",
        "--model",
        path(&model),
        "--steps",
        "1",
        "--fp8",
        "mxfp8",
    ]);
    assert!(err.contains("already quantized (mxfp8)"), "{err}");
    assert!(!out.exists());

    let err = fail(&[
        "quantize",
        "--model",
        "tiny",
        "--out",
        path(&d.join("x")),
        "--mode",
        "fp4",
    ]);
    assert!(err.contains("unknown quantization mode `fp4`"), "{err}");
    let err = fail(&["generate", "--steps", "1", "--fp8", "int8"]);
    assert!(err.contains("unknown quantization mode `int8`"), "{err}");

    let err = fail(&[
        "quantize",
        "--model",
        "tiny",
        "--out",
        path(&model),
        "--mode",
        "mxfp8",
    ]);
    assert!(err.contains("already holds a checkpoint"), "{err}");

    // config.json: an unknown mode, an unsupported width, a mode without quantized tensors.
    let config_path = model.join("config.json");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let with = |quantization: Value| {
        let mut config = config.clone();
        config["quantization"] = quantization;
        std::fs::write(&config_path, config.to_string()).unwrap();
        fail(&["info", "--model", path(&model)])
    };
    let err = with(serde_json::json!({"mode": "nf4", "group_size": 32, "bits": 8}));
    assert!(
        err.contains("config.json") && err.contains("unknown quantization mode `nf4`"),
        "{err}"
    );
    let err = with(serde_json::json!({"mode": "mxfp8", "group_size": 32, "bits": 4}));
    assert!(err.contains("not supported"), "{err}");
    let err = with(Value::Null);
    assert!(err.contains("records no quantization"), "{err}");

    let pipeline = d.join("dense");
    succeed(&["init", "--model", "tiny", "--out", path(&pipeline)]);
    let dense = pipeline.join("transformer");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dense.join("config.json")).unwrap()).unwrap();
    config["quantization"] = serde_json::json!({"mode": "affine8", "group_size": 32, "bits": 8});
    std::fs::write(dense.join("config.json"), config.to_string()).unwrap();
    let err = fail(&["info", "--model", path(&dense)]);
    assert!(err.contains("no tensor is quantized"), "{err}");
}

/// A damaged quantized checkpoint: every problem is listed in one error, including
/// tensors of the wrong dtype, which loading would otherwise convert silently.
#[test]
fn a_damaged_quantized_checkpoint_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("affine8");
    quantize("tiny", &model, "affine8");
    let file = model.join(WEIGHTS_FILE);
    let mut tensors = load_safetensors(&file).unwrap().tensors;
    let packed = "layers.0.attention.to_k.weight";
    let as_float = tensors[packed].astype(Dtype::F32);
    tensors.insert(packed.into(), as_float);
    tensors.remove("layers.1.feed_forward.w3.weight_qbias");
    let scale = tensors.remove("t_embedder.mlp.0.weight_scale").unwrap();
    tensors.insert("x_pad_token.weight_scale".into(), scale);
    let owned: Vec<(String, Array)> = tensors.into_iter().collect();
    save_safetensors(&file, owned.iter().map(|(n, a)| (n, a)), &BTreeMap::new()).unwrap();

    let err = fail(&["info", "--model", path(&model)]);
    for expected in [
        "1 missing: layers.1.feed_forward.w3.weight_qbias",
        "1 wrongly stored: layers.0.attention.to_k.weight (expected uint32, found float32)",
        // Without its scale, mlp.0 is a dense layer: its packed weight has the wrong shape
        // and its affine bias belongs to nothing.
        "1 wrongly shaped: t_embedder.mlp.0.weight (expected",
        "2 unexpected: t_embedder.mlp.0.weight_qbias, x_pad_token.weight_scale",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }
}

/// An fp8 checkpoint whose tensors are not fp8's (an mxfp8 checkpoint recorded as fp8:
/// packed words and byte scales per group), or whose scale is not one per channel, is
/// refused with the tensors named, not converted.
#[test]
fn fp8_checkpoints_with_other_layouts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mxfp8 = dir.path().join("mxfp8");
    quantize("tiny", &mxfp8, "mxfp8");
    let config_path = mxfp8.join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["quantization"] = serde_json::json!({"mode": "fp8", "bits": 8});
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = fail(&["info", "--model", path(&mxfp8)]);
    for expected in [
        "wrongly shaped: all_x_embedder.2-1.weight (expected [64, 64], found [64, 16])",
        "all_x_embedder.2-1.weight_scale (expected [64], found [64, 2])",
        "wrongly stored: all_x_embedder.2-1.weight (expected uint8, found uint32)",
        "all_x_embedder.2-1.weight_scale (expected float32, found uint8)",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }

    let fp8 = dir.path().join("fp8");
    quantize("tiny", &fp8, "fp8");
    let file = fp8.join(WEIGHTS_FILE);
    let mut tensors = load_safetensors(&file).unwrap().tensors;
    let scale = "layers.0.attention.to_q.weight_scale";
    let grouped = tensors[scale].reshape(&[64, 1]);
    tensors.insert(scale.into(), grouped);
    let owned: Vec<(String, Array)> = tensors.into_iter().collect();
    save_safetensors(&file, owned.iter().map(|(n, a)| (n, a)), &BTreeMap::new()).unwrap();
    let err = fail(&["info", "--model", path(&fp8)]);
    assert!(
        err.contains("1 wrongly shaped: layers.0.attention.to_q.weight_scale (expected [64]"),
        "{err}"
    );
}

/// A stored quantized checkpoint loads with either matmul path forced, into quantized
/// layers wherever a `weight_scale` is stored and dense ones elsewhere.
#[test]
fn quantized_layers_load_whatever_the_matmul_path() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    quantize("tiny", &model, "mxfp8");
    let source = ModelSource::Dir(PathBuf::from(&model));
    for matmul in [MatmulPath::Kernel, MatmulPath::Dequantize] {
        let options = LoadOptions {
            matmul: Some(matmul),
            ..LoadOptions::from(Dtype::F32)
        };
        let loaded = weights::load(&source, options).unwrap();
        assert_eq!(loaded.quantization.matmul, Some(matmul));
        let config = loaded.model.config.quantization.as_ref();
        assert_eq!(config.map(|q| q.format), Some(QuantFormat::Mxfp8));
        let Linear::Quantized(q) = &loaded.model.layers[0].attention.to_q else {
            panic!("to_q is dense");
        };
        assert_eq!(q.matmul, matmul);
        assert!(matches!(loaded.model.final_layer.linear, Linear::Dense(_)));
    }
}

// === pipelines ================================================================================

/// `dit generate --model <model> ...`'s final latents, with `extra` flags.
fn generated_latents(model: &Path, out: &Path, extra: &[&str]) -> Vec<f32> {
    let mut args = vec!["generate", "--model", path(model), "--prompt", "a red fox"];
    args.extend(["--steps", "2", "--width", "128", "--height", "128"]);
    // One path for every run: the probe may pick either when they are close (as on tiny's
    // layers), and the two round differently.
    args.extend([
        "--save-latents",
        path(out),
        "--quantized-matmul",
        "dequantize",
    ]);
    args.extend(extra);
    succeed(&args);
    floats(&load_safetensors(out).unwrap().tensors["latents"])
}

fn read_json(file: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// `dit quantize` on a pipeline folder quantizes the transformer and the text encoder,
/// copies the rest, and the written pipeline samples exactly what quantizing the dense one
/// at load samples (the same op on the same float32 weights, stored losslessly). Written
/// in MLX's layout instead (`scales`, `biases`, `{"group_size", "bits"}`), it loads and
/// samples the same again.
#[test]
fn a_quantized_pipeline_samples_exactly_like_in_memory_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("dense");
    succeed(&["init", "--model", "tiny", "--out", path(&dense)]);
    let quantized = dir.path().join("affine4");
    let stdout = quantize(path(&dense), &quantized, "affine4");
    assert!(stdout.contains("text encoder"), "{stdout}");
    for component in ["vae", "tokenizer", "scheduler"] {
        assert!(quantized.join(component).is_dir(), "no {component}/");
    }
    let vae = |root: &Path| std::fs::read(root.join("vae").join(WEIGHTS_FILE)).unwrap();
    assert!(vae(&quantized) == vae(&dense), "the VAE is copied as it is");
    let encoder = read_json(&quantized.join("text_encoder/config.json"));
    assert_eq!(
        encoder["quantization"],
        serde_json::json!({"mode": "affine4", "group_size": 64, "bits": 4})
    );

    let from_file = generated_latents(&quantized, &dir.path().join("a.safetensors"), &[]);
    let in_memory = generated_latents(
        &dense,
        &dir.path().join("b.safetensors"),
        &["--quantize", "affine4"],
    );
    assert!(
        from_file == in_memory,
        "{:e}",
        relative_error(&from_file, &in_memory)
    );
    let dense_latents = generated_latents(&dense, &dir.path().join("c.safetensors"), &[]);
    assert!(from_file != dense_latents, "quantization changed nothing");

    let info = succeed(&["info", "--model", path(&quantized), "--json"]);
    let info: Value = serde_json::from_str(info.trim()).unwrap();
    let encoder = &info["components"]["text_encoder"]["quantization"];
    // The text encoder runs one of its two layers: seven linear layers, all quantized.
    assert_eq!(encoder["mode"], "affine4");
    assert_eq!(
        (&encoder["quantized_layers"], &encoder["dense_layers"]),
        (&7.into(), &0.into())
    );
    assert_eq!(info["components"]["vae"]["quantization"]["mode"], "none");

    to_mlx_layout(&quantized.join("transformer"), WEIGHTS_FILE);
    to_mlx_layout(&quantized.join("text_encoder"), "model.safetensors");
    let mlx_layout = generated_latents(&quantized, &dir.path().join("d.safetensors"), &[]);
    assert!(
        mlx_layout == from_file,
        "{:e}",
        relative_error(&mlx_layout, &from_file)
    );
}

/// Rewrites a quantized checkpoint in MLX's layout: `<layer>.scales` and `<layer>.biases`,
/// and mlx-lm's `"quantization": {"group_size", "bits"}` without a mode.
fn to_mlx_layout(dir: &Path, file: &str) {
    let tensors = load_safetensors(dir.join(file)).unwrap().tensors;
    let renamed: Vec<(String, Array)> = tensors
        .into_iter()
        .map(|(name, array)| {
            let name = name
                .replace(".weight_scale", ".scales")
                .replace(".weight_qbias", ".biases");
            (name, array)
        })
        .collect();
    let renamed_names = renamed.iter().map(|(n, a)| (n, a));
    save_safetensors(dir.join(file), renamed_names, &BTreeMap::new()).unwrap();
    let mut config = read_json(&dir.join("config.json"));
    let q = config["quantization"].clone();
    config["quantization"] = serde_json::json!({"group_size": q["group_size"], "bits": q["bits"]});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// mlx-lm quantizes the embedding table with the linear layers: the text encoder
/// dequantizes it at load, to exactly the table MLX's dequantization gives.
#[test]
fn a_quantized_embedding_table_is_dequantized_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let dense = dir.path().join("dense");
    succeed(&["init", "--model", "tiny", "--out", path(&dense)]);
    let quantized = dir.path().join("q");
    quantize(path(&dense), &quantized, "affine4");
    let encoder = quantized.join("text_encoder");
    to_mlx_layout(&encoder, "model.safetensors");
    let file = encoder.join("model.safetensors");
    let mut tensors = load_safetensors(&file).unwrap().tensors;
    let table = tensors.remove("embed_tokens.weight").unwrap();
    let q = packed(QuantConfig::new(QuantFormat::Affine4), &table);
    let expected = floats(&q.dequantize(Some(Dtype::F32)));
    tensors.insert("embed_tokens.weight".into(), q.weights);
    tensors.insert("embed_tokens.scales".into(), q.scales);
    tensors.insert("embed_tokens.biases".into(), q.biases.unwrap());
    let owned: Vec<(String, Array)> = tensors.into_iter().collect();
    save_safetensors(&file, owned.iter().map(|(n, a)| (n, a)), &BTreeMap::new()).unwrap();

    let model = qwen3::weights::load(&encoder, Dtype::F32).unwrap();
    assert_eq!(floats(&model.embed_tokens.weight), expected);
    assert!(matches!(model.layers[0].mlp.up_proj, Linear::Quantized(_)));
}

/// `--quantized-matmul` overrides the probe for every quantized component.
#[test]
fn the_matmul_path_can_be_chosen() {
    for (flag, name) in [
        ("kernel", "quantized_matmul"),
        ("dequantize", "dequantize+matmul"),
    ] {
        let info = succeed(&[
            "info",
            "--model",
            "tiny",
            "--quantize",
            "affine8",
            "--quantized-matmul",
            flag,
            "--json",
        ]);
        let info: Value = serde_json::from_str(info.trim()).unwrap();
        assert_eq!(info["quantization"]["matmul"], name, "{info}");
        let encoder = &info["components"]["text_encoder"]["quantization"];
        assert_eq!(encoder["matmul"], name, "{info}");
    }
}
