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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mlx::{random, Array, Dtype};

const N: i32 = 1024;
const MATMUL_REPS: usize = 10;
const CHAIN: usize = 10_000;
const CHAIN_ROUNDS: usize = 9;
/// Alternating trials of graph building, ours then Python's.
const DISPATCH_TRIALS: usize = 5;

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
    let x = Array::ones(&[4, 4], Dtype::F32);
    let one = Array::ones(&[4, 4], Dtype::F32);
    mlx::eval([&x, &one]).expect("evaluating two 4x4 arrays");
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
MODE = sys.argv[1]
N, REPS, CHAIN, ROUNDS = (int(a) for a in sys.argv[2:6])
mx.set_default_device(mx.cpu)
if MODE == "dispatch":
    x = mx.ones((4, 4)); one = mx.ones((4, 4))
    mx.eval(x, one)
    rounds = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        y = x
        for _ in range(CHAIN):
            y = y + one
        rounds.append((time.perf_counter() - t) * 1e9 / CHAIN)
        del y
    rounds.sort()
    print(rounds[len(rounds) // 2])
else:
    k1, k2 = mx.random.split(mx.random.key(0))
    a = mx.random.normal((N, N), key=k1)
    b = mx.random.normal((N, N), key=k2)
    mx.eval(a, b)
    mx.eval(a @ b)
    times = []
    for _ in range(REPS):
        t = time.perf_counter(); mx.eval(a @ b); times.append(time.perf_counter() - t)
    times.sort()
    print(2 * N**3 / times[len(times) // 2] / 1e9)
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

/// One figure from MLX's Python bindings: `mode` is `matmul` (GFLOP/s) or `dispatch`
/// (ns per op).
fn python_figure(path: &Path, mode: &str) -> Result<f64, String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_BENCH)
        .arg(mode)
        .args([
            N.to_string(),
            MATMUL_REPS.to_string(),
            CHAIN.to_string(),
            CHAIN_ROUNDS.to_string(),
        ])
        .env("PYTHONPATH", path)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| format!("unexpected output from the Python benchmark: {text}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let info = mlx::build_info();
    println!(
        "MLX {} ({}); BLAS: {}",
        info.mlx_version, info.origin, info.blas
    );
    let python = python_path(&info.mlx_version)
        .map_err(|why| format!("the Python baseline is unavailable: {why}"))?;

    // Alternate the two sides so that load from other tenants of the machine hits both.
    // Graph building goes first: OpenBLAS's threads keep spinning for a while after a
    // matmul and would take the second core from it.
    let mut ours_ns = Vec::new();
    let mut python_ns = Vec::new();
    for _ in 0..DISPATCH_TRIALS {
        ours_ns.push(dispatch_ns_per_op());
        python_ns.push(python_figure(&python, "dispatch")?);
    }
    let (ours_ns, python_ns) = (median(ours_ns), median(python_ns));
    let ours_gflops = matmul_gflops()?;
    let python_gflops = python_figure(&python, "matmul")?;

    println!();
    println!(
        "{:<34} {:>12} {:>14} {:>8}",
        "", "this runtime", "stock (Python)", "ratio"
    );
    println!(
        "{:<34} {:>12.1} {:>14.1} {:>7.1}x",
        format!("f32 matmul {N}^3, GFLOP/s"),
        ours_gflops,
        python_gflops,
        ours_gflops / python_gflops
    );
    println!(
        "{:<34} {:>12.0} {:>14.0} {:>7.2}x",
        format!("graph building, ns/op ({CHAIN} adds)"),
        ours_ns,
        python_ns,
        ours_ns / python_ns
    );
    println!();
    println!(
        "targets: matmul at least 30x the stock BLAS with OpenBLAS; ns/op at most 0.5x Python's"
    );
    Ok(())
}
