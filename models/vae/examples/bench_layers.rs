//! The layers' formulations on this machine, against MLX's own ops: convolutions,
//! and the element-wise and attention costs that bound the rest.
//!
//! ```sh
//! cargo run --release -p vae --example bench_layers
//! ```
//!
//! Each line: the best of 5 runs, and the peak memory above the inputs.

use std::time::Instant;

use mlx::fast::{self, Mask};
use mlx::nn::Conv2d;
use mlx::{random, Array, Dtype};
use vae::conv::{pointwise, row_taps, shifted_outputs};

fn time(label: &str, flops: f64, f: impl Fn() -> Array) -> Array {
    let y = f();
    y.eval().unwrap();
    let base = mlx::memory::active_memory();
    mlx::memory::reset_peak_memory().unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        f().eval().unwrap();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let peak = mlx::memory::peak_memory().saturating_sub(base) as f64 / (1 << 20) as f64;
    let rate = if flops > 0.0 {
        format!(", {:5.1} GFLOP/s", flops / best / 1e9)
    } else {
        String::new()
    };
    println!(
        "  {label:24} {:8.1} ms{rate}, peak +{peak:.0} MiB",
        best * 1e3
    );
    y
}

fn max_diff(a: &Array, b: &Array) -> f32 {
    (a - b).abs().max(mlx::ALL, false).item::<f32>().unwrap()
}

fn convolutions() {
    let shapes = [
        (128, 128, 128),
        (256, 128, 128),
        (256, 128, 64),
        (512, 64, 64),
        (512, 64, 32),
        (512, 32, 32),
        (512, 32, 3),
        (512, 3, 32),
        (64, 16, 128),
    ];
    for (size, inp, out) in shapes {
        println!("3x3 conv [1, {size}, {size}, {inp}] -> {out}");
        let keys = random::split(&random::key(size as u64), 3);
        let x = random::normal(&[1, size, size, inp], Dtype::F32, &keys[0]);
        let conv = Conv2d {
            weight: random::normal(&[out, inp, 3, 3], Dtype::F32, &keys[1]),
            bias: Some(random::normal(&[out], Dtype::F32, &keys[2])),
            stride: 1,
            padding: 1,
        };
        let flops = 2.0 * f64::from(size * size) * f64::from(inp * out * 9);
        let theirs = time("MLX conv2d", flops, || conv.forward(&x));
        let a = time("row taps", flops, || row_taps(&conv, &x));
        let b = time("shifted outputs", flops, || shifted_outputs(&conv, &x));
        println!(
            "  max difference: row taps {:.1e}, shifted outputs {:.1e}",
            max_diff(&a, &theirs),
            max_diff(&b, &theirs)
        );
        let conv1 = Conv2d {
            weight: conv.weight.slice_axis(2, 1, 2).slice_axis(3, 1, 2),
            padding: 0,
            ..conv.clone()
        };
        let theirs = time("1x1: MLX conv2d", flops / 9.0, || conv1.forward(&x));
        let ours = time("1x1: one matmul", flops / 9.0, || pointwise(&conv1, &x));
        println!("  max difference {:.1e}", max_diff(&ours, &theirs));
    }
}

fn element_wise_and_attention() {
    let x = random::normal(&[1, 512, 512, 64], Dtype::F32, &random::key(1));
    println!("element-wise on [1, 512, 512, 64] (16M elements)");
    time("x + 1", 0.0, || &x + 1.0);
    time("exp", 0.0, || x.exp());
    time("silu", 0.0, || x.silu());
    let keys = random::split(&random::key(1), 3);
    let qkv: Vec<Array> = keys
        .iter()
        .map(|k| random::normal(&[1, 1, 4096, 128], Dtype::F32, k))
        .collect();
    println!("attention, one head, 4096 pixels x 128 channels (a 512x512 image's mid block)");
    time("fast::sdpa", 4.0 * 4096.0 * 4096.0 * 128.0, || {
        fast::scaled_dot_product_attention(&qkv[0], &qkv[1], &qkv[2], 128f32.powf(-0.5), Mask::None)
    });
    let scores = qkv[0].matmul(&qkv[1].swapaxes(-1, -2));
    time("its softmax alone", 0.0, || scores.softmax(-1));
}

fn main() {
    println!("{}", mlx::build_info().blas);
    convolutions();
    element_wise_and_attention();
}
