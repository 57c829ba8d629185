//! Helpers shared by the integration tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use mlx::Array;

/// The diffusers reference fixtures (written by zimage/tests/fixtures/gen_fixtures.py).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// max|ours − reference| / max|reference|, after checking the shapes agree.
pub fn relative_error(ours: &Array, reference: &Array) -> f32 {
    assert_eq!(ours.shape(), reference.shape(), "shapes differ");
    let ours = ours.astype(mlx::Dtype::F32).to_vec::<f32>().unwrap();
    let reference = reference.to_vec::<f32>().unwrap();
    let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(&reference)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}
