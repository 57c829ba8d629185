use mlx::{Array, Module};

#[derive(Module)]
struct Norm {
    weight: Array,
    #[weight(skip)]
    running_mean: Array,
}

fn main() {}
