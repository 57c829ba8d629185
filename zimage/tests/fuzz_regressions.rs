//! Inputs the fuzz targets (`fuzz/`) found that broke a reader, each a clear error now.
//! The files are in `tests/fixtures/fuzz/`, named after the target that found them.

use std::path::{Path, PathBuf};

use zimage::edit;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name)
}

/// `picture`: a 609-byte JPEG whose header claims 17232x26947 pixels made the decoder and
/// the RGB conversion allocate 1.8 GB. The header is checked before decoding.
#[test]
fn a_picture_claiming_huge_sides_is_refused_before_decoding() {
    let path = fixture("picture-huge-jpeg.jpg");
    let error = edit::read_picture(&path).unwrap_err().to_string();
    assert!(error.contains("picture-huge-jpeg.jpg"), "{error}");
    assert!(error.contains("17232x26947"), "{error}");
    assert!(error.contains("scale it down"), "{error}");
}
