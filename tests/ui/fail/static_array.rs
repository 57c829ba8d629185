use mlx::Array;

#[mlx::graph]
fn add_bias(x: &Array, #[mlx(static)] bias: Array) -> Array {
    x + bias
}

fn main() {}
