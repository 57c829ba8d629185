use mlx::Array;

#[mlx::graph]
fn sum_pair((a, b): (Array, Array)) -> Array {
    a + b
}

fn main() {}
