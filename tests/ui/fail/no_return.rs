use mlx::Array;

#[mlx::graph]
fn nothing(_x: &Array) {}

fn main() {}
