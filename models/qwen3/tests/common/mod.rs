//! Helpers the test binaries share.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

/// The transformers reference fixtures (written by `zimage/tests/fixtures/gen_fixtures.py`).
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

/// Asserts that an error is one line that names `file`, and returns it.
pub fn one_line_naming(err: impl std::fmt::Display, file: &Path) -> String {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(
        text.contains(&file.display().to_string()),
        "does not name {}: {text}",
        file.display()
    );
    text
}
