use mlx::Array;

#[mlx::graph]
fn step(x: &Array) -> Array {
    let y = x.exp();
    mlx::eval([&y]).unwrap();
    y
}

fn main() {}
