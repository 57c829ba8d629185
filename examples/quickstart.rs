//! A first look at the runtime: one transformer block (RMSNorm, attention with rotary
//! positions, SwiGLU feed-forward) over random weights, evaluated lazily, checked against
//! a plain-matmul attention, saved to safetensors and read back.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Instant;

use mlx::fast::{self, Mask, Rope};
use mlx::{memory, random, Array, Dtype};

const TOKENS: i32 = 256;
const DIM: i32 = 256;
const HEADS: i32 = 4;
const HIDDEN: i32 = 683;

struct Block {
    norm1: Array,
    qkv: Array,
    out: Array,
    norm2: Array,
    w1: Array,
    w2: Array,
    w3: Array,
}

impl Block {
    fn random(seed: u64) -> Block {
        let keys = random::split(&random::key(seed), 5);
        let linear = |key: &Array, out: i32, inp: i32| {
            random::normal(&[out, inp], Dtype::F32, key) * (1.0 / f64::from(inp).sqrt())
        };
        Block {
            norm1: Array::ones(&[DIM], Dtype::F32),
            qkv: linear(&keys[0], 3 * DIM, DIM),
            out: linear(&keys[1], DIM, DIM),
            norm2: Array::ones(&[DIM], Dtype::F32),
            w1: linear(&keys[2], HIDDEN, DIM),
            w2: linear(&keys[3], DIM, HIDDEN),
            w3: linear(&keys[4], HIDDEN, DIM),
        }
    }

    /// `x: [1, tokens, dim]`. `attention` computes softmax(q kᵀ / √d) v from `[1, H, L, D]`
    /// queries, keys and values.
    fn forward(&self, x: &Array, attention: impl Fn(&Array, &Array, &Array) -> Array) -> Array {
        let head_dim = DIM / HEADS;
        let h = fast::rms_norm(x, Some(&self.norm1), 1e-6);
        let qkv = h
            .matmul(&self.qkv.t())
            .reshape(&[1, TOKENS, 3, HEADS, head_dim]);
        let heads = |i: i32| {
            qkv.slice_axis(2, i, i + 1)
                .squeeze(2)
                .transpose(&[0, 2, 1, 3])
        };
        let rope = Rope::new(head_dim);
        let (q, k, v) = (
            fast::rope(&heads(0), rope),
            fast::rope(&heads(1), rope),
            heads(2),
        );
        let attended = attention(&q, &k, &v)
            .transpose(&[0, 2, 1, 3])
            .reshape(&[1, TOKENS, DIM]);
        let x = x + attended.matmul(&self.out.t());
        let h = fast::rms_norm(&x, Some(&self.norm2), 1e-6);
        let gated = h.matmul(&self.w1.t()).silu() * h.matmul(&self.w3.t());
        &x + gated.matmul(&self.w2.t())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let info = mlx::build_info();
    println!(
        "MLX {} from {} (BLAS: {})",
        info.mlx_version, info.origin, info.blas
    );
    println!("device: {:?}", mlx::default_device()?);

    let block = Block::random(0);
    let x = random::normal(&[1, TOKENS, DIM], Dtype::F32, &random::key(1));
    mlx::eval([&x, &block.qkv, &block.out, &block.w1, &block.w2, &block.w3])?;

    let scale = 1.0 / ((DIM / HEADS) as f32).sqrt();
    let start = Instant::now();
    let fused = block.forward(&x, |q, k, v| {
        fast::scaled_dot_product_attention(q, k, v, scale, Mask::None)
    });
    let built = start.elapsed();
    fused.eval()?;
    let computed = start.elapsed();
    println!(
        "transformer block, {TOKENS} tokens x {DIM} dims: graph built in {:.2} ms, evaluated in {:.2} ms",
        built.as_secs_f64() * 1e3,
        (computed - built).as_secs_f64() * 1e3
    );

    // The same block with attention spelled out as matmuls and a softmax.
    let plain = block.forward(&x, |q, k, v| {
        (q.matmul(&k.swapaxes(-1, -2)) * f64::from(scale))
            .softmax(-1)
            .matmul(v)
    });
    let diff = (&fused - &plain).abs().max(mlx::ALL, false).item::<f32>()?;
    let size = fused.abs().max(mlx::ALL, false).item::<f32>()?;
    println!("fused vs plain attention: max |diff| = {diff:.2e} (outputs up to {size:.2})");
    if diff > 1e-4 * size.max(1.0) {
        eprintln!("fused and plain attention disagree");
        std::process::exit(1);
    }

    let dir = std::env::temp_dir().join(format!("mlx-quickstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("block_output.safetensors");
    let metadata = [("producer".to_string(), "quickstart".to_string())].into();
    mlx::io::save_safetensors(&path, [("out", &fused)], &metadata)?;
    let loaded = mlx::io::load_safetensors(&path)?;
    let same = loaded.tensors["out"]
        .equal(&fused)
        .all(mlx::ALL, false)
        .item::<bool>()?;
    println!(
        "saved and reloaded {} ({} bytes): identical = {same}",
        path.display(),
        fused.nbytes()
    );
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "memory: active {:.1} MB, peak {:.1} MB",
        memory::active_memory() as f64 / 1e6,
        memory::peak_memory() as f64 / 1e6
    );
    Ok(())
}
