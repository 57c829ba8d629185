use mlx::Array;

#[mlx::graph]
fn first(x: &Array) -> Array {
    let v = x.to_vec::<f32>().unwrap();
    x * v[0]
}

fn main() {}
