//! What the transformer's tests share.

use std::path::{Path, PathBuf};

/// The diffusers reference fixtures (see `fixtures/gen_fixtures.py`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
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
