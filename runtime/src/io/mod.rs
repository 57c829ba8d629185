//! Reading and writing arrays: safetensors files and sharded checkpoints.

mod checkpoint;
mod safetensors;

pub use self::checkpoint::{holds_checkpoint, load_checkpoint, save_checkpoint, Checkpoint};
pub use self::safetensors::{load_safetensors, save_safetensors, Safetensors};
