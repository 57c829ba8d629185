use mlx::Array;

#[mlx::graph]
fn update(x: &mut Array, y: &Array) -> Array {
    let _ = x;
    y * 2.0
}

fn main() {}
