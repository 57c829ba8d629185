use mlx::Module;

#[derive(Module)]
struct Wrapper<T> {
    inner: T,
}

fn main() {}
