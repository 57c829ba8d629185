//! Runtime benchmark: measured side by side in one run.
//!
//! 1. float32 1024×1024×1024 matmul GFLOP/s through this runtime (MLX bound to OpenBLAS
//!    when the build found it) versus the stock MLX wheel with its bundled BLAS, in a
//!    process that links `libmlx` alone: MLX's own Python bindings.
//! 2. Graph-building cost per op: 10,000 chained adds of small arrays, not evaluated,
//!    through this runtime versus MLX's Python bindings.
//!
//! ```text
//! cargo run --release --example bench_runtime
//! ```
//!
//! The Python side needs `mlx` and `mlx-cpu` of the same version as the runtime; the
//! benchmark installs them with pip into `target/mlx-python` the first time (set
//! `MLX_BENCH_PYTHONPATH` to use an existing installation instead).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use mlx::{random, Array, Dtype};

const N: i32 = 1024;
const MATMUL_REPS: usize = 10;
const CHAIN: usize = 10_000;
const CHAIN_ROUNDS: usize = 7;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn matmul_gflops() -> mlx::Result<f64> {
    let keys = random::split(&random::key(0), 2);
    let a = random::normal(&[N, N], Dtype::F32, &keys[0]);
    let b = random::normal(&[N, N], Dtype::F32, &keys[1]);
    mlx::eval([&a, &b])?;
    a.matmul(&b).eval()?; // warm-up
    let mut times = Vec::new();
    for _ in 0..MATMUL_REPS {
        let start = Instant::now();
        a.matmul(&b).eval()?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * f64::from(N).powi(3) / median(times) / 1e9)
}

/// Nanoseconds per op of building (not evaluating) a chain of adds.
fn dispatch_ns_per_op() -> f64 {
    let x = Array::from_slice(&[1.0f32; 16], &[4, 4]);
    let one = Array::from_slice(&[1.0f32; 16], &[4, 4]);
    let mut rounds = Vec::new();
    for _ in 0..CHAIN_ROUNDS {
        let start = Instant::now();
        let mut y = x.clone();
        for _ in 0..CHAIN {
            y = &y + &one;
        }
        let elapsed = start.elapsed().as_secs_f64();
        std::hint::black_box(&y);
        drop(y);
        rounds.push(elapsed * 1e9 / CHAIN as f64);
    }
    median(rounds)
}

const PYTHON_BENCH: &str = r#"
import sys, time
import mlx.core as mx
N, REPS, CHAIN, ROUNDS = (int(a) for a in sys.argv[1:5])
mx.set_default_device(mx.cpu)
k1, k2 = mx.random.split(mx.random.key(0))
a = mx.random.normal((N, N), key=k1)
b = mx.random.normal((N, N), key=k2)
mx.eval(a, b)
mx.eval(a @ b)
times = []
for _ in range(REPS):
    t = time.perf_counter(); mx.eval(a @ b); times.append(time.perf_counter() - t)
times.sort()
print("matmul_gflops", 2 * N**3 / times[len(times) // 2] / 1e9)
x = mx.ones((4, 4)); one = mx.ones((4, 4))
rounds = []
for _ in range(ROUNDS):
    t = time.perf_counter()
    y = x
    for _ in range(CHAIN):
        y = y + one
    rounds.append((time.perf_counter() - t) * 1e9 / CHAIN)
    del y
rounds.sort()
print("dispatch_ns", rounds[len(rounds) // 2])
print("version", mx.__version__)
"#;

fn python_path(version: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("MLX_BENCH_PYTHONPATH") {
        return Ok(PathBuf::from(path));
    }
    // The executable is target/<profile>/examples/bench_runtime.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("unexpected executable location")?;
    let dir = target.join("mlx-python").join(version);
    if !dir.join("mlx").join("core").exists() && !dir.join("mlx").join("lib").exists() {
        eprintln!(
            "installing mlx=={version} and mlx-cpu=={version} into {}",
            dir.display()
        );
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg("--target")
            .arg(&dir)
            .arg(format!("mlx=={version}"))
            .arg(format!("mlx-cpu=={version}"))
            .status()
            .map_err(|e| format!("cannot run pip: {e}"))?;
        if !status.success() {
            return Err(format!("pip install failed ({status})"));
        }
    }
    Ok(dir)
}

/// (matmul GFLOP/s, ns per op) from MLX's Python bindings.
fn python_baseline(version: &str) -> Result<(f64, f64), String> {
    let path = python_path(version)?;
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_BENCH)
        .args([
            N.to_string(),
            MATMUL_REPS.to_string(),
            CHAIN.to_string(),
            CHAIN_ROUNDS.to_string(),
        ])
        .env("PYTHONPATH", &path)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("python output lacks {name}: {text}"))
    };
    Ok((field("matmul_gflops")?, field("dispatch_ns")?))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let info = mlx::build_info();
    println!(
        "MLX {} ({}); BLAS: {}",
        info.mlx_version, info.origin, info.blas
    );

    let ours_gflops = matmul_gflops()?;
    let ours_ns = dispatch_ns_per_op();
    let (py_gflops, py_ns) = match python_baseline(&info.mlx_version) {
        Ok(figures) => figures,
        Err(why) => {
            eprintln!("Python baseline unavailable: {why}");
            println!("f32 matmul {N}^3: ours {ours_gflops:.1} GFLOP/s");
            println!("graph building: ours {ours_ns:.0} ns/op");
            std::process::exit(1);
        }
    };
    println!();
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "", "this runtime", "stock (Python)", "ratio"
    );
    println!(
        "{:<34} {:>12.1} {:>14.1} {:>7.1}x",
        format!("f32 matmul {N}^3, GFLOP/s"),
        ours_gflops,
        py_gflops,
        ours_gflops / py_gflops
    );
    println!(
        "{:<34} {:>12.0} {:>14.0} {:>7.2}x",
        format!("graph building, ns/op ({CHAIN} adds)"),
        ours_ns,
        py_ns,
        ours_ns / py_ns
    );
    println!();
    println!(
        "targets: matmul at least 30x the stock BLAS with OpenBLAS; ns/op at most 0.5x Python's"
    );
    Ok(())
}
