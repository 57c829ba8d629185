//! Running the `dit` binary from integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mlx::{Array, Dtype};
use serde_json::Value;

pub fn dit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dit"))
        .args(args)
        .output()
        .expect("the dit binary runs")
}

pub fn succeed(args: &[&str]) -> String {
    let out = dit(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dit {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail and returns its error line.
pub fn fail(args: &[&str]) -> String {
    let out = dit(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Exit status 1 is an error the command reports; clap's usage errors exit with 2; a
    // panic (101, reported by the hook as an internal error) or an abort is a bug.
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "dit {args:?} exited with {:?}: {stderr}",
        out.status.code()
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "dit {args:?} panicked: {stderr}"
    );
    assert!(stderr.starts_with("error"), "dit {args:?}: {stderr}");
    stderr
}

pub fn last_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// max|ours − reference| / max|reference|.
pub fn relative_error(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// An array's values as float32.
pub fn floats(a: &Array) -> Vec<f32> {
    a.astype(Dtype::F32).to_vec::<f32>().unwrap()
}

/// The bound of every parity check against diffusers, float32 on the CPU.
pub const TOLERANCE: f32 = 1e-4;

/// Checks `ours` against diffusers' `reference` (same shape, relative error within
/// [`TOLERANCE`]), prints the error and returns it.
pub fn check(what: &str, ours: &Array, reference: &Array) -> f32 {
    assert_eq!(ours.shape(), reference.shape(), "{what}: shape");
    let err = relative_error(&floats(ours), &floats(reference));
    eprintln!("{what}: max|ours - ref| / max|ref| = {err:.2e}");
    assert!(err <= TOLERANCE, "{what}: {err:e}");
    err
}

/// The pipeline's diffusers reference fixtures (see `fixtures/gen_fixtures.py`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The transformer's and scheduler's diffusers fixtures, which the DiT crate owns.
pub fn dit_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/dit/tests/fixtures")
}
