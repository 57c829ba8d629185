//! Binaries of this package (examples, integration tests) load `libmlx` at run time.
//! A library's `rustc-link-arg` does not reach dependent crates, so the runtime publishes
//! the directory through its `links = "mlx"` metadata and each binary-producing package
//! bakes it into an rpath. Started straight from `target/`, a binary then finds MLX
//! without any environment variable.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIBDIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
