//! The safetensors reader over hostile bytes: header length, header JSON, offsets, dtypes,
//! shapes, metadata. Every error must name the file; every tensor read must be usable.
#![no_main]

use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.safetensors";

fuzz_target!(|data: &[u8]| {
    match mlx::io::load_safetensors_from_bytes(ORIGIN, data.to_vec()) {
        Ok(file) => {
            for (name, array) in &file.tensors {
                // Reading the data back touches every byte the array claims to own.
                let values = array.astype(mlx::Dtype::F32).to_vec::<f32>();
                assert_eq!(values.map(|v| v.len()).ok(), Some(array.size()), "{name}");
            }
        }
        Err(e) => assert!(e.to_string().contains(ORIGIN), "{e}"),
    }
});
