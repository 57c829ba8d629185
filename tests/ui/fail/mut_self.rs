use mlx::{Array, Module};

#[derive(Module)]
struct Scale {
    w: Array,
}

impl Scale {
    #[mlx::graph]
    fn forward(&mut self, x: &Array) -> Array {
        x * &self.w
    }
}

fn main() {}
