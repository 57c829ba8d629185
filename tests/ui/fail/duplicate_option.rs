use mlx::Array;

#[mlx::graph(shapeless, shapeless)]
fn double(x: &Array) -> Array {
    x * 2.0
}

fn main() {}
