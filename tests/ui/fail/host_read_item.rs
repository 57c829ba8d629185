use mlx::Array;

#[mlx::graph]
fn normalize(x: &Array) -> Array {
    let m = x.max(mlx::ALL, false).item::<f32>().unwrap();
    x / m
}

fn main() {}
