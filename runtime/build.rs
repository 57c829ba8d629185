//! Finds MLX, compiles the C++ shim against it and links both.
//!
//! MLX is looked up in this order, the first that works wins:
//! 1. `MLX_DIR`: a directory holding `include/mlx/mlx.h` and `lib/libmlx.*` (never touches
//!    the network);
//! 2. an importable Python `mlx` installation that ships its headers and library;
//! 3. the pinned wheel (`mlx-cpu`, or `mlx-metal` on macOS) installed by pip into a cache
//!    inside the target directory.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one place the MLX version is pinned.
const MLX_VERSION: &str = "0.32.4";

struct Mlx {
    include: PathBuf,
    lib: PathBuf,
    origin: String,
}

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=MLX_NO_OPENBLAS");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rerun-if-env-changed=PYTHONPATH");
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-changed=cpp/shim.h");

    let mlx = match find_mlx() {
        Ok(mlx) => mlx,
        Err(reasons) => {
            eprintln!("error: could not find or install MLX {MLX_VERSION}.");
            eprintln!("Tried, in order:");
            for reason in &reasons {
                eprintln!("  - {reason}");
            }
            eprintln!(
                "Fix one of them: set MLX_DIR to a directory with include/ and lib/, \
                 install the Python package (`pip install mlx-cpu=={MLX_VERSION}` on Linux, \
                 `pip install mlx=={MLX_VERSION}` on macOS), or make `python3 -m pip` able \
                 to reach PyPI."
            );
            std::process::exit(1);
        }
    };

    let openblas = if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var_os("MLX_NO_OPENBLAS").is_none()
    {
        find_openblas()
    } else {
        None
    };

    let mut build = cc::Build::new();
    if openblas.is_some() {
        build.define("MLXS_OPENBLAS", None);
    }
    build
        .cpp(true)
        .std("c++20")
        // -isystem: MLX's own headers are not ours to warn about.
        .flag("-isystem")
        .flag(mlx.include.as_os_str())
        .file("cpp/shim.cpp")
        .warnings(true)
        .extra_warnings(true)
        .compile("mlx_shim");

    link(&mlx, openblas.as_deref());
}

fn find_mlx() -> Result<Mlx, Vec<String>> {
    let mut reasons = Vec::new();
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        match check_install(&dir) {
            Ok(mlx) => return Ok(with_origin(mlx, "MLX_DIR")),
            // An explicit MLX_DIR that is wrong is an error, not a reason to go online.
            Err(why) => {
                reasons.push(format!("MLX_DIR={}: {why}", dir.display()));
                return Err(reasons);
            }
        }
    }
    reasons.push("MLX_DIR is not set".into());

    match python_mlx_dir() {
        Ok(dir) => match check_install(&dir) {
            Ok(mlx) => return Ok(with_origin(mlx, "the Python mlx package")),
            Err(why) => reasons.push(format!("Python mlx at {}: {why}", dir.display())),
        },
        Err(why) => reasons.push(format!("Python mlx: {why}")),
    }

    match pip_install() {
        Ok(dir) => match check_install(&dir) {
            Ok(mlx) => return Ok(with_origin(mlx, "the pinned wheel")),
            Err(why) => reasons.push(format!("pinned wheel at {}: {why}", dir.display())),
        },
        Err(why) => reasons.push(format!("pip install of the pinned wheel: {why}")),
    }
    Err(reasons)
}

fn with_origin(mut mlx: Mlx, origin: &str) -> Mlx {
    mlx.origin = origin.to_string();
    mlx
}

fn lib_file_name() -> &'static str {
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    }
}

fn check_install(dir: &Path) -> Result<Mlx, String> {
    let include = dir.join("include");
    let lib = dir.join("lib");
    if !include.join("mlx").join("mlx.h").is_file() {
        return Err(format!("no {}", include.join("mlx/mlx.h").display()));
    }
    if !lib.join(lib_file_name()).is_file() {
        return Err(format!("no {}", lib.join(lib_file_name()).display()));
    }
    Ok(Mlx {
        include,
        lib,
        origin: String::new(),
    })
}

fn python() -> String {
    env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn python_mlx_dir() -> Result<PathBuf, String> {
    let out = Command::new(python())
        .args(["-c", "import mlx; print(list(mlx.__path__)[0])"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python()))?;
    if !out.status.success() {
        return Err("not importable".into());
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(dir))
}

/// Installs the pinned wheel into `<target>/mlx-wheel/<package>-<version>/` once; later
/// builds (any profile) reuse it.
fn pip_install() -> Result<PathBuf, String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let target = out_dir
        .ancestors()
        .nth(4)
        .ok_or("unexpected OUT_DIR layout")?
        .to_path_buf();
    let package = if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        "mlx-metal"
    } else {
        "mlx-cpu"
    };
    let root = target
        .join("mlx-wheel")
        .join(format!("{package}-{MLX_VERSION}"));
    let mlx_dir = root.join("mlx");
    if check_install(&mlx_dir).is_ok() {
        return Ok(mlx_dir);
    }
    // Install next to the final place and rename, so a concurrent or interrupted build
    // never sees half a wheel.
    let staging = target
        .join("mlx-wheel")
        .join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--target"])
        .arg(&staging)
        .arg(format!("{package}=={MLX_VERSION}"))
        .status()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python()))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "`pip install {package}=={MLX_VERSION}` failed ({status})"
        ));
    }
    if std::fs::rename(&staging, &root).is_err() {
        // Another build won the race; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(mlx_dir)
}

fn link(mlx: &Mlx, openblas: Option<&Path>) {
    let lib = mlx.lib.display().to_string();
    // Reported by `mlx::build_info()`, so users can tell which MLX a binary runs on.
    println!("cargo:rustc-env=MLX_RS_ORIGIN={}", mlx.origin);
    println!("cargo:rustc-env=MLX_RS_LIBDIR={lib}");
    // Cargo puts link-search paths inside the target directory on the library path of
    // `cargo run`/`cargo test` (doctests included). A link inside OUT_DIR extends that to an
    // MLX that lives elsewhere; the kernel resolves the library's own `$ORIGIN/..` rpath
    // through the link to the real directory.
    let search = link_into_out_dir(&mlx.lib).unwrap_or_else(|| mlx.lib.clone());
    println!("cargo:rustc-link-search=native={}", search.display());

    // OpenBLAS must come before libmlx on the link line: see `find_openblas`.
    if let Some(dir) = openblas {
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-lib=dylib=openblas");
    }
    println!("cargo:rustc-link-lib=dylib=mlx");
    // Our own tests and examples; dependents add the same rpath from `DEP_MLX_LIBDIR`.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:libdir={lib}");
    println!("cargo:include={}", mlx.include.display());
}

fn link_into_out_dir(lib: &Path) -> Option<PathBuf> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR")?);
    let link = out_dir.join("mlx-lib");
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(lib, &link).ok()?;
        Some(link)
    }
    #[cfg(not(unix))]
    {
        let _ = link;
        None
    }
}

/// MLX's Linux wheel calls a bundled reference BLAS. Linking OpenBLAS into the executable
/// ahead of `libmlx` makes the dynamic linker bind MLX's `cblas_*` calls to OpenBLAS
/// (about 44x faster float32 matmul on a 2-core x86-64). The shim calls one OpenBLAS
/// function (`openblas_get_config`, from a static initializer and `build_info`), so the
/// linker's `--as-needed` keeps the dependency, in that order, in every binary.
fn find_openblas() -> Option<PathBuf> {
    const DIRS: &[&str] = &[
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
        "/opt/OpenBLAS/lib",
    ];
    let found = DIRS
        .iter()
        .map(PathBuf::from)
        .find(|dir| dir.join("libopenblas.so").exists());
    if found.is_none() {
        println!(
            "cargo:warning=mlx: OpenBLAS not found (apt-get install libopenblas-dev, then \
             cargo clean -p mlx-runtime); float32 matmul will use MLX's bundled reference \
             BLAS, about 40x slower"
        );
    }
    found
}
