use mlx::{Array, Module};

#[derive(Module)]
struct Attention {
    #[weight("to_out.0")]
    #[weight(skip)]
    to_out: Array,
}

fn main() {}
