use mlx::{Array, Module};

#[derive(Module)]
struct Norm {
    weight: Array,
    eps: f32,
}

fn main() {}
