use mlx::{Array, Module};

#[derive(Module)]
struct Attention {
    #[weight("proj")]
    q: Array,
    #[weight("proj")]
    k: Array,
}

fn main() {}
