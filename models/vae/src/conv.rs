//! [`Conv2d`] in the formulations that are fast on MLX's CPU backend.
//!
//! MLX's CPU convolution copies 9 shifted views of the input next to each other (im2col)
//! and multiplies once: 9x the input's memory, and slow where a matrix side is thin. Its
//! 1x1 convolutions are 2-10x slower than the same product, and a 3x3 convolution to 3
//! channels (every decoder's `conv_out`) runs at 2 GFLOP/s. The best of 5 runs on this
//! project's 2-core x86 CPU with OpenBLAS, shared with other work at the time (`cargo run
//! --release -p vae --example bench_layers`):
//!
//! | 3x3 conv, NHWC   | MLX conv2d      | row taps        | shifted outputs  |
//! |------------------|-----------------|-----------------|------------------|
//! | 256², 128 -> 128 | 549 ms, 353 MiB | 411 ms, 162 MiB | 729 ms, 358 MiB  |
//! | 512², 64 -> 64   | 823 ms, 705 MiB | 560 ms, 321 MiB | 1205 ms, 709 MiB |
//! | 512², 32 -> 32   | 422 ms, 352 MiB | 315 ms, 161 MiB | 445 ms, 355 MiB  |
//! | 512², 32 -> 3    | 248 ms, 323 MiB | 151 ms, 132 MiB | 49 ms, 62 MiB    |
//!
//! 1x1 at 512², 64 -> 32: MLX 193 ms, one matmul 81 ms; 32 -> 3: 47 ms against 4.5 ms.
//! On a GPU, MLX's own kernels run the 3x3 convolutions; 1x1 convolutions are products
//! everywhere.

use mlx::nn::Conv2d;
use mlx::{concatenate, Array, Device};

/// `conv` on `x: [N, H, W, in]`, by whichever formulation suits its shape.
pub fn conv2d(conv: &Conv2d, x: &Array) -> Array {
    match formulation(conv, x, on_cpu()) {
        Formulation::Pointwise => pointwise(conv, x),
        Formulation::RowTaps => row_taps(conv, x),
        Formulation::ShiftedOutputs => shifted_outputs(conv, x),
        Formulation::Mlx => conv.forward(x),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Formulation {
    Mlx,
    Pointwise,
    RowTaps,
    ShiftedOutputs,
}

fn formulation(conv: &Conv2d, x: &Array, cpu: bool) -> Formulation {
    // Anything but a 4-D input and weight is left to MLX, which reports it.
    let &[out, inp, _, _] = conv.weight.shape() else {
        return Formulation::Mlx;
    };
    if x.ndim() != 4 {
        Formulation::Mlx
    } else if is_1x1(conv) {
        Formulation::Pointwise
    } else if cpu && is_same_size_3x3(conv) && 4 * out <= inp {
        Formulation::ShiftedOutputs
    } else if cpu && is_same_size_3x3(conv) {
        Formulation::RowTaps
    } else {
        Formulation::Mlx
    }
}

fn is_1x1(conv: &Conv2d) -> bool {
    matches!(conv.weight.shape(), &[_, _, 1, 1]) && (conv.stride, conv.padding) == (1, 0)
}

fn is_same_size_3x3(conv: &Conv2d) -> bool {
    matches!(conv.weight.shape(), &[_, _, 3, 3]) && (conv.stride, conv.padding) == (1, 1)
}

fn on_cpu() -> bool {
    mlx::default_device().map_or(true, |device| device == Device::Cpu)
}

/// The bias, or zeros: what the products accumulate onto.
fn bias(conv: &Conv2d, out: i32) -> Array {
    conv.bias
        .clone()
        .unwrap_or_else(|| Array::zeros(&[out], conv.weight.dtype()))
}

/// A 1x1 convolution (stride 1, no padding) as a product over the channels. Other
/// convolutions are left to MLX.
pub fn pointwise(conv: &Conv2d, x: &Array) -> Array {
    if !is_1x1(conv) || x.ndim() != 4 {
        return conv.forward(x);
    }
    let [n, h, w, c] = x.dims();
    let [out, _, _, _] = conv.weight.dims();
    let weight = conv.weight.reshape(&[out, c]);
    bias(conv, out)
        .addmm(&x.reshape(&[n * h * w, c]), &weight.t(), 1.0, 1.0)
        .reshape(&[n, h, w, out])
}

/// 3x3, stride 1, padding 1: each pixel's three horizontal neighbours side by side on the
/// channel axis (3x the input), then one product per kernel row, accumulated onto the bias
/// by `addmm`. A kernel row reads whole padded rows: a contiguous view, not a copy.
/// Other convolutions are left to MLX.
pub fn row_taps(conv: &Conv2d, x: &Array) -> Array {
    if !is_same_size_3x3(conv) || x.ndim() != 4 {
        return conv.forward(x);
    }
    let [n, h, w, c] = x.dims();
    let [out, _, kh, kw] = conv.weight.dims();
    let padded = x.pad(&[(0, 0), (1, 1), (1, 1), (0, 0)], 0.0);
    let taps: Vec<Array> = (0..kw)
        .map(|dx| padded.slice(&[0, 0, dx, 0], &[n, h + 2, dx + w, c], &[]))
        .collect();
    let rows = concatenate(&taps.iter().collect::<Vec<_>>(), 3);
    // [kh, kw·in, out]: kernel row dy's weights in the order of `rows`' channels.
    let weight = conv
        .weight
        .transpose(&[2, 3, 1, 0])
        .reshape(&[kh, kw * c, out]);
    let mut acc = bias(conv, out);
    for dy in 0..kh {
        let inputs = rows.slice_axis(1, dy, dy + h).reshape(&[n * h * w, kw * c]);
        let row_weight = weight.slice_axis(0, dy, dy + 1).reshape(&[kw * c, out]);
        acc = acc.addmm(&inputs, &row_weight, 1.0, 1.0);
    }
    acc.reshape(&[n, h, w, out])
}

/// 3x3, stride 1, padding 1, few output channels: one product from the padded input to
/// all nine taps' outputs (9 x out channels, few), then the nine shifted views summed.
/// Other convolutions are left to MLX.
pub fn shifted_outputs(conv: &Conv2d, x: &Array) -> Array {
    if !is_same_size_3x3(conv) || x.ndim() != 4 {
        return conv.forward(x);
    }
    let [n, h, w, c] = x.dims();
    let [out, _, kh, kw] = conv.weight.dims();
    let padded = x.pad(&[(0, 0), (1, 1), (1, 1), (0, 0)], 0.0);
    // [in, kh·kw·out]
    let weight = conv
        .weight
        .transpose(&[1, 2, 3, 0])
        .reshape(&[c, kh * kw * out]);
    let taps = padded
        .matmul(&weight)
        .reshape(&[n, h + 2, w + 2, kh * kw, out]);
    let mut acc = bias(conv, out);
    for dy in 0..kh {
        for dx in 0..kw {
            let k = dy * kw + dx;
            let shifted = taps
                .slice(&[0, dy, dx, k, 0], &[n, dy + h, dx + w, k + 1, out], &[])
                .reshape(&[n, h, w, out]);
            acc = acc + shifted;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx::{random, Dtype};

    fn max_diff(a: &Array, b: &Array) -> f32 {
        assert_eq!(a.shape(), b.shape());
        (a - b).abs().max(mlx::ALL, false).item::<f32>().unwrap()
    }

    fn layer(inp: i32, out: i32, kernel: i32, seed: u64, bias: bool) -> Conv2d {
        let keys = random::split(&random::key(seed), 2);
        Conv2d {
            weight: random::normal(&[out, inp, kernel, kernel], Dtype::F32, &keys[0]),
            bias: bias.then(|| random::normal(&[out], Dtype::F32, &keys[1])),
            stride: 1,
            padding: kernel / 2,
        }
    }

    /// Every formulation against MLX's own convolution, with and without bias, on a
    /// batch of two (the row views then are not one contiguous run) and a non-square
    /// image.
    #[test]
    fn formulations_agree_with_mlx_conv2d() {
        let x = random::normal(&[2, 7, 5, 12], Dtype::F32, &random::key(9));
        let cases = [
            (12, 12, 3, Formulation::RowTaps),
            (12, 3, 3, Formulation::ShiftedOutputs),
            (12, 5, 3, Formulation::RowTaps),
            (12, 20, 1, Formulation::Pointwise),
        ];
        for (inp, out, kernel, expected) in cases {
            for bias in [true, false] {
                let conv = layer(inp, out, kernel, (inp * out) as u64, bias);
                assert_eq!(formulation(&conv, &x, true), expected);
                if kernel == 3 {
                    assert_eq!(formulation(&conv, &x, false), Formulation::Mlx);
                }
                let ours = conv2d(&conv, &x);
                let theirs = conv.forward(&x);
                let scale = theirs.abs().max(mlx::ALL, false).item::<f32>().unwrap();
                let err = max_diff(&ours, &theirs) / scale;
                assert!(err < 1e-6, "{inp}->{out} k{kernel} bias {bias}: {err}");
            }
        }
    }

    #[test]
    fn malformed_layers_and_inputs_fail_as_arrays_not_panics() {
        let x = random::normal(&[1, 4, 4, 3], Dtype::F32, &random::key(1));
        let flat = Conv2d {
            weight: Array::zeros(&[3, 3], Dtype::F32),
            ..layer(3, 3, 3, 1, true)
        };
        assert!(conv2d(&flat, &x).check().is_err());
        let conv = layer(3, 3, 3, 1, true);
        assert!(conv2d(&conv, &Array::zeros(&[4, 4, 3], Dtype::F32))
            .check()
            .is_err());
        assert!(conv2d(&conv, &Array::zeros(&[1, 4, 4, 5], Dtype::F32))
            .check()
            .is_err());
    }

    #[test]
    fn strided_convolutions_use_mlx() {
        let x = random::normal(&[1, 8, 8, 4], Dtype::F32, &random::key(1));
        let conv = Conv2d {
            stride: 2,
            padding: 0,
            ..layer(4, 4, 3, 2, true)
        };
        assert_eq!(formulation(&conv, &x, true), Formulation::Mlx);
        assert_eq!(max_diff(&conv2d(&conv, &x), &conv.forward(&x)), 0.0);
    }
}
