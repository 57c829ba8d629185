//! What a model directory holds: a diffusers pipeline folder (`model_index.json` naming
//! `scheduler/`, `text_encoder/`, `tokenizer/`, `transformer/` and `vae/`), or a lone
//! transformer checkpoint (`config.json` and its weights), as the transformer-only `dit`
//! commands have always read.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{read_text, Error, Result};

/// The pipeline classes whose folders this crate runs: they share `ZImagePipeline`'s
/// components.
const PIPELINE_CLASSES: [&str; 3] = [
    "ZImagePipeline",
    "ZImageImg2ImgPipeline",
    "ZImageInpaintPipeline",
];

/// A pipeline component: its folder name and the classes that can fill it.
struct Component {
    name: &'static str,
    classes: &'static [&'static str],
}

const COMPONENTS: [Component; 5] = [
    Component {
        name: "scheduler",
        classes: &["FlowMatchEulerDiscreteScheduler"],
    },
    Component {
        name: "text_encoder",
        classes: &["Qwen3Model", "Qwen3ForCausalLM"],
    },
    Component {
        name: "tokenizer",
        classes: &["Qwen2Tokenizer", "Qwen2TokenizerFast"],
    },
    Component {
        name: "transformer",
        classes: &["ZImageTransformer2DModel"],
    },
    Component {
        name: "vae",
        classes: &["AutoencoderKL"],
    },
];

/// The component folders of a pipeline directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineDirs {
    pub root: PathBuf,
    pub scheduler: PathBuf,
    pub text_encoder: PathBuf,
    pub tokenizer: PathBuf,
    pub transformer: PathBuf,
    pub vae: PathBuf,
}

/// What `--model DIR` points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelDir {
    Pipeline(PipelineDirs),
    /// A transformer checkpoint on its own: no text encoder, no VAE.
    Transformer(PathBuf),
}

/// The file that makes a directory a pipeline folder.
pub const MODEL_INDEX: &str = "model_index.json";

impl ModelDir {
    /// Reads `dir`: a pipeline folder if it has a `model_index.json`, else a transformer
    /// checkpoint if it has a `config.json`.
    pub fn inspect(dir: &Path) -> Result<ModelDir> {
        let index = dir.join(MODEL_INDEX);
        if index.is_file() {
            return read_index(dir, &index).map(ModelDir::Pipeline);
        }
        if dir.join("config.json").is_file() {
            return Ok(ModelDir::Transformer(dir.to_path_buf()));
        }
        let what = if dir.is_dir() {
            format!("has neither {MODEL_INDEX} (a pipeline folder) nor config.json (a transformer checkpoint)")
        } else {
            "is not a directory".to_string()
        };
        Err(Error::Input(format!("{}: {what}", dir.display())))
    }

    /// The pipeline folder `root` as `text`, its `model_index.json`, describes it (every
    /// component's folder must exist); errors name `root`'s `model_index.json`.
    pub fn from_index(root: &Path, text: &str) -> Result<PipelineDirs> {
        parse_index(root, &root.join(MODEL_INDEX), text)
    }

    /// The transformer's checkpoint directory.
    pub fn transformer(&self) -> &Path {
        match self {
            ModelDir::Pipeline(dirs) => &dirs.transformer,
            ModelDir::Transformer(dir) => dir,
        }
    }
}

/// Checks `model_index.json` and that every component's folder exists.
fn read_index(root: &Path, index: &Path) -> Result<PipelineDirs> {
    parse_index(root, index, &read_text(index)?)
}

/// Checks `text`, the contents of `index`, and that every component's folder exists.
fn parse_index(root: &Path, index: &Path, text: &str) -> Result<PipelineDirs> {
    let config_error = |message: String| Error::Config {
        path: index.to_path_buf(),
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| config_error(e.to_string()))?;
    let class = value.get("_class_name").and_then(Value::as_str);
    match class {
        Some(class) if PIPELINE_CLASSES.contains(&class) => {}
        Some(class) => {
            return Err(config_error(format!(
                "`_class_name` is {class}, not a Z-Image pipeline ({})",
                PIPELINE_CLASSES.join(", ")
            )))
        }
        None => return Err(config_error("no `_class_name`".into())),
    }
    let mut problems = Vec::new();
    for component in &COMPONENTS {
        // diffusers writes each component as ["library", "ClassName"].
        let entry = value.get(component.name).and_then(Value::as_array);
        match entry.and_then(|e| e.get(1)).and_then(Value::as_str) {
            Some(class) if component.classes.contains(&class) => {}
            Some(class) => problems.push(format!(
                "`{}` is {class}, expected {}",
                component.name,
                component.classes.join(" or ")
            )),
            None => problems.push(format!("no `{}` component", component.name)),
        }
        let dir = root.join(component.name);
        if entry.is_some() && !dir.is_dir() {
            problems.push(format!("its `{}` folder is missing", component.name));
        }
    }
    if !problems.is_empty() {
        return Err(config_error(problems.join("; ")));
    }
    Ok(PipelineDirs {
        root: root.to_path_buf(),
        scheduler: root.join("scheduler"),
        text_encoder: root.join("text_encoder"),
        tokenizer: root.join("tokenizer"),
        transformer: root.join("transformer"),
        vae: root.join("vae"),
    })
}

/// `model_index.json` for a pipeline folder this crate writes, as diffusers writes it.
pub fn model_index_json() -> Value {
    let mut index = serde_json::json!({
        "_class_name": "ZImagePipeline",
        "_diffusers_version": "0.42.1",
    });
    let libraries = [
        "diffusers",
        "transformers",
        "transformers",
        "diffusers",
        "diffusers",
    ];
    for (component, library) in COMPONENTS.iter().zip(libraries) {
        index[component.name] = serde_json::json!([library, component.classes[0]]);
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_folder(index: &Value, missing: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(MODEL_INDEX), index.to_string()).unwrap();
        for component in &COMPONENTS {
            if Some(component.name) != missing {
                std::fs::create_dir(dir.path().join(component.name)).unwrap();
            }
        }
        dir
    }

    #[test]
    fn a_written_index_reads_back() {
        let dir = write_folder(&model_index_json(), None);
        let ModelDir::Pipeline(dirs) = ModelDir::inspect(dir.path()).unwrap() else {
            panic!("not a pipeline");
        };
        assert_eq!(dirs.vae, dir.path().join("vae"));
    }

    #[test]
    fn unknown_classes_and_missing_folders_are_named() {
        let mut index = model_index_json();
        index["vae"] = serde_json::json!(["diffusers", "AutoencoderTiny"]);
        let dir = write_folder(&index, Some("tokenizer"));
        let err = ModelDir::inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model_index.json"), "{err}");
        assert!(err.contains("`vae` is AutoencoderTiny"), "{err}");
        assert!(err.contains("`tokenizer` folder is missing"), "{err}");

        index = model_index_json();
        index["_class_name"] = serde_json::json!("FluxPipeline");
        let dir = write_folder(&index, None);
        let err = ModelDir::inspect(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("FluxPipeline, not a Z-Image pipeline"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_directory_is_neither() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelDir::inspect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("neither model_index.json"), "{err}");
    }
}
