use mlx::Array;

#[mlx::graph]
async fn double(x: &Array) -> Array {
    x * 2.0
}

fn main() {}
