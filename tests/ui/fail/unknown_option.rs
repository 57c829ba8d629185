use mlx::Array;

#[mlx::graph(fast)]
fn double(x: &Array) -> Array {
    x * 2.0
}

fn main() {}
