//! Reading and writing arrays: safetensors files and sharded checkpoints.

mod checkpoint;
mod safetensors;

pub use self::checkpoint::{
    holds_checkpoint, load_checkpoint, save_checkpoint, Checkpoint, SCALE_SUFFIX,
};
pub use self::safetensors::{
    load_safetensors, load_safetensors_from_bytes, save_safetensors, Safetensors,
};
