#[mlx::graph]
struct NotAFunction;

fn main() {}
