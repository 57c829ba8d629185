use mlx::{Array, Module};

#[derive(Module)]
struct Attention {
    #[weight(to_out)]
    to_out: Array,
}

fn main() {}
