//! Input pictures (PNG, JPEG) as `dit generate --image/--mask` reads them: decoding, the
//! cut to multiples of 16 with PIL's Lanczos resize, the mask's grayscale and binarizing,
//! the tensors the VAE takes, and resizes to other sizes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use zimage::{edit, resample};

fuzz_target!(|data: &[u8]| {
    // Pictures the header says are over 1 MP but within edit::MAX_PICTURE_PIXELS are
    // skipped: decoding millions of pixels under ASan outlasts the timeout (12.7 MP took
    // over 10 s in the unoptimized build CI runs), and the decoders run the same code at
    // any size. Larger claims still reach decode_picture, which must refuse them.
    let claimed = image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .ok()
        .and_then(|reader| reader.into_dimensions().ok())
        .map(|(w, h)| u64::from(w) * u64::from(h));
    if claimed.is_some_and(|n| n > 1 << 20 && n <= edit::MAX_PICTURE_PIXELS) {
        return;
    }
    let path = Path::new("fuzz/picture.png");
    let picture = match edit::decode_picture(path, data) {
        Ok(picture) => picture,
        Err(e) => {
            assert!(e.to_string().contains("fuzz/picture.png"), "{e}");
            return;
        }
    };
    let (w, h) = (picture.width, picture.height);
    assert_eq!(picture.pixels.len() as u64, u64::from(w) * u64::from(h) * 3);
    // Larger pictures (up to edit::MAX_PICTURE_PIXELS) are decoded but not resized: under
    // ASan and coverage counters a resize costs about 100 ns per pixel and tap (a 16424x17
    // picture took 2.5 s of CPU here), and the resampler runs the same code at any size.
    let pixels = u64::from(w) * u64::from(h);
    if pixels > 1 << 18 {
        return;
    }
    if let Ok(fitted) = edit::fit_sides(&picture) {
        assert_eq!((fitted.width % 16, fitted.height % 16), (0, 0));
        assert_eq!(
            fitted.pixels.len(),
            (fitted.width * fitted.height * 3) as usize
        );
        let tensor = edit::image_tensor(&fitted).expect("a fitted picture is a tensor");
        mlx::eval([&tensor]).expect("the picture's tensor evaluates");
    }
    if let Ok(mask) = edit::fit_mask(&picture) {
        edit::check_mask(&mask, &mask).expect("a mask fits itself");
        let tensor = edit::mask_tensor(&mask).expect("a fitted mask is a tensor");
        mlx::eval([&tensor]).expect("the mask's tensor evaluates");
    }
    // Up and down by other factors than the cut, for pictures up to 256x256.
    if pixels > 1 << 16 {
        return;
    }
    for (out_w, out_h) in [(w / 3 + 1, h * 2), (w + 7, (h / 2).max(1)), (1, 1)] {
        if u64::from(out_w) * u64::from(out_h) <= 1 << 18 {
            let out = resample::lanczos_rgb8(&picture.pixels, w, h, out_w, out_h);
            assert_eq!(out.len() as u64, u64::from(out_w) * u64::from(out_h) * 3);
        }
    }
});
