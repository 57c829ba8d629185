//! A sharded checkpoint's `*.safetensors.index.json` against two fixed shards next to it:
//! hostile weight maps (unknown shards, paths, tensors in two shards, missing tensors).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mlx::Array;

const INDEX: &str = "model.safetensors.index.json";

/// A directory holding `a.safetensors` (`x`, `y`) and `b.safetensors` (`z`), made once.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory").keep();
        let (x, y, z) = (
            Array::from_slice(&[1.0f32, 2.0], &[2]),
            Array::from_slice(&[3i32], &[1, 1]),
            Array::from_slice(&[4u8, 5, 6], &[3]),
        );
        let none = Default::default();
        mlx::io::save_safetensors(dir.join("a.safetensors"), [("x", &x), ("y", &y)], &none)
            .expect("shard a");
        mlx::io::save_safetensors(dir.join("b.safetensors"), [("z", &z)], &none).expect("shard b");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = dir();
    let index = dir.join(INDEX);
    std::fs::write(&index, data).expect("writing the index");
    match mlx::io::load_checkpoint(&index) {
        Ok(checkpoint) => {
            for name in checkpoint.names() {
                assert!(checkpoint.file_of(name).is_some_and(|f| f.starts_with(dir)));
            }
        }
        // The index or one of the shards it names.
        Err(e) => assert!(e.to_string().contains(&*dir.to_string_lossy()), "{e}"),
    }
});
