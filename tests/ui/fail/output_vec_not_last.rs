use mlx::Array;

#[derive(mlx::GraphOutput)]
struct Heads {
    heads: Vec<Array>,
    merged: Array,
}

fn main() {}
