use mlx::{Array, Module};

#[derive(Module)]
enum Layer {
    Dense { weight: Array },
}

fn main() {}
