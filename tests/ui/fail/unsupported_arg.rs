use mlx::Array;

#[mlx::graph]
fn named(x: &Array, label: String) -> Array {
    let _ = label;
    x * 2.0
}

fn main() {}
