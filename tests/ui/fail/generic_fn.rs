use mlx::Array;

#[mlx::graph]
fn apply<F: Fn(&Array) -> Array>(x: &Array, f: F) -> Array {
    f(x)
}

fn main() {}
