//! A pipeline folder's `model_index.json` (classes, components), in a folder that has every
//! component's directory.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = tempfile::tempdir().expect("a temporary directory").keep();
        for component in [
            "scheduler",
            "text_encoder",
            "tokenizer",
            "transformer",
            "vae",
        ] {
            std::fs::create_dir(root.join(component)).expect("a component folder");
        }
        root
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let root = root();
    match zimage::folder::ModelDir::from_index(root, text) {
        Ok(dirs) => assert!(dirs.transformer.starts_with(root)),
        Err(e) => assert!(e.to_string().contains("model_index.json"), "{e}"),
    }
});
