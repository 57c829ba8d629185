//! Checkpoints that may be sharded over several safetensors files.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::safetensors::{load_safetensors, save_safetensors};
use crate::{Array, Dtype, Error, Result};

/// All tensors of a checkpoint, by name, with the file each came from.
#[derive(Debug, Default)]
pub struct Checkpoint {
    tensors: BTreeMap<String, (Array, usize)>,
    files: Vec<PathBuf>,
}

impl Checkpoint {
    /// A checkpoint of arrays already in memory (built-in models, tests).
    pub fn from_arrays<S: Into<String>>(
        arrays: impl IntoIterator<Item = (S, Array)>,
    ) -> Checkpoint {
        Checkpoint {
            tensors: arrays
                .into_iter()
                .map(|(name, array)| (name.into(), (array, 0)))
                .collect(),
            files: vec![PathBuf::from("<memory>")],
        }
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Array> {
        self.tensors.get(name).map(|(array, _)| array)
    }

    /// Removes and returns the tensor called `name` (loaders use this to find tensors
    /// that nothing asked for).
    pub fn take(&mut self, name: &str) -> Option<Array> {
        self.tensors.remove(name).map(|(array, _)| array)
    }

    /// The file the tensor called `name` was read from.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors
            .get(name)
            .map(|(_, file)| self.files[*file].as_path())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The files read.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The tensors, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Array)> {
        self.tensors
            .iter()
            .map(|(name, (array, _))| (name.as_str(), array))
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// Reads a checkpoint from:
/// - a `*.safetensors.index.json` (the shards it lists, next to it),
/// - a directory holding exactly one such index, or else exactly one `*.safetensors`,
/// - a single `*.safetensors` file.
///
/// With an index, every shard must hold exactly the tensors the index assigns to it: a
/// tensor the index lists but its shard lacks, a tensor a shard holds but the index does
/// not assign to it, and a tensor in two shards are errors naming the file and tensor.
pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    if path.is_dir() {
        return load_dir(path);
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.ends_with(".index.json") {
        load_index(path)
    } else {
        let file = load_safetensors(path)?;
        let mut checkpoint = Checkpoint {
            files: vec![path.to_path_buf()],
            ..Checkpoint::default()
        };
        for (name, array) in file.tensors {
            checkpoint.tensors.insert(name, (array, 0));
        }
        Ok(checkpoint)
    }
}

fn load_dir(dir: &Path) -> Result<Checkpoint> {
    let mut indexes = Vec::new();
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::file(dir, None, e))? {
        let entry = entry.map_err(|e| Error::file(dir, None, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(entry.path());
        } else if name.ends_with(".safetensors") {
            shards.push(entry.path());
        }
    }
    indexes.sort();
    shards.sort();
    match (indexes.as_slice(), shards.as_slice()) {
        ([index], _) => load_index(index),
        ([], [single]) => load_checkpoint(single),
        ([], []) => Err(Error::file(dir, None, "no *.safetensors file in the directory")),
        ([], _) => Err(Error::file(
            dir,
            None,
            format!(
                "{} *.safetensors files but no *.safetensors.index.json saying which tensor is where",
                shards.len()
            ),
        )),
        _ => Err(Error::file(
            dir,
            None,
            format!("{} *.safetensors.index.json files; expected one", indexes.len()),
        )),
    }
}

fn load_index(index_path: &Path) -> Result<Checkpoint> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::file(index_path, None, e))?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|e| Error::file(index_path, None, format!("not a safetensors index: {e}")))?;
    let dir = index_path.parent().unwrap_or(Path::new("."));

    // Shard file name -> the tensors the index puts there.
    let mut by_shard: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tensor, shard) in &index.weight_map {
        if shard.contains('/') || shard.contains('\\') || shard == ".." {
            return Err(Error::file(
                index_path,
                Some(tensor),
                format!("shard `{shard}` is not a file name next to the index"),
            ));
        }
        by_shard.entry(shard).or_default().push(tensor);
    }

    let mut checkpoint = Checkpoint::default();
    for (shard, listed) in by_shard {
        let shard_path = dir.join(shard);
        let mut file = load_safetensors(&shard_path)?;
        let file_index = checkpoint.files.len();
        checkpoint.files.push(shard_path.clone());
        for tensor in listed {
            let array = file.tensors.remove(tensor).ok_or_else(|| {
                Error::file(
                    &shard_path,
                    Some(tensor),
                    format!(
                        "the index {} lists this tensor here, but the file lacks it",
                        index_path.display()
                    ),
                )
            })?;
            checkpoint
                .tensors
                .insert(tensor.to_string(), (array, file_index));
        }
        if let Some(extra) = file.tensors.keys().next() {
            let message = match index.weight_map.get(extra) {
                Some(other) => {
                    format!("the index assigns this tensor to {other}, yet this shard holds it too")
                }
                None => format!(
                    "the index {} does not list this tensor",
                    index_path.display()
                ),
            };
            return Err(Error::file(&shard_path, Some(extra), message));
        }
    }
    Ok(checkpoint)
}

/// Whether `dir` already holds a checkpoint: a `config.json`, a pipeline's
/// `model_index.json`, safetensors files or a shard index. Writing a new checkpoint there
/// would mix with the old one (a stale index above all). A missing or unreadable directory
/// holds none: creating or writing it will say what is wrong.
pub fn holds_checkpoint(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        name == "config.json"
            || name == "model_index.json"
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json")
    })
}

/// The suffix of a quantized layer's scales in a checkpoint (`<layer>.weight_scale`).
pub const SCALE_SUFFIX: &str = ".weight_scale";

/// Writes a checkpoint directory as diffusers and transformers lay one out: the tensors in
/// one safetensors file named `weights_file` (with PyTorch's `format` metadata) and
/// `config` (JSON text) as `config.json`, creating `dir`. Floating-point tensors are
/// written in `dtype` but for the scales of FP8 byte weights (`<layer>.weight_scale` beside
/// a uint8 `<layer>.weight`: `fp8`'s, float32 whatever the weights' dtype); integer ones (a
/// quantized layer's packed words and byte scales) keep theirs.
pub fn save_checkpoint<'a, S: AsRef<str>>(
    dir: &Path,
    weights_file: &str,
    tensors: impl IntoIterator<Item = (S, &'a Array)>,
    dtype: Dtype,
    config: &str,
) -> Result<()> {
    if !dtype.is_float() {
        return Err(Error::file(
            dir,
            None,
            format!("checkpoints are written in a float dtype, not {dtype}"),
        ));
    }
    let tensors: Vec<(S, &Array)> = tensors.into_iter().collect();
    let byte_weights: HashSet<&str> = tensors
        .iter()
        .filter(|(_, array)| array.dtype() == Dtype::U8)
        .filter_map(|(name, _)| name.as_ref().strip_suffix(".weight"))
        .collect();
    let fp8_scale = |name: &str| {
        name.strip_suffix(SCALE_SUFFIX)
            .is_some_and(|layer| byte_weights.contains(layer))
    };
    let stored: Vec<(&S, Array)> = tensors
        .iter()
        .map(|(name, array)| {
            let array = if array.dtype().is_float() && !fp8_scale(name.as_ref()) {
                array.astype(dtype)
            } else {
                (*array).clone()
            };
            (name, array)
        })
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, None, e))?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(
        dir.join(weights_file),
        stored.iter().map(|(name, array)| (name.as_ref(), array)),
        &metadata,
    )?;
    let path = dir.join("config.json");
    std::fs::write(&path, format!("{config}\n")).map_err(|e| Error::file(&path, None, e))
}
