//! Finds MLX, compiles the C++ shim against it and links both.
//!
//! `MLX_BACKEND` chooses which MLX: `cpu` (Linux's default), `cuda` (Linux, NVIDIA GPUs) or
//! `metal` (macOS's default and only choice). MLX is looked up in this order, the first that
//! works wins:
//! 1. `MLX_DIR`: a directory holding `include/mlx/mlx.h` and `lib/libmlx.*` (never touches
//!    the network); its backend is whatever that MLX was built with;
//! 2. an importable Python `mlx` installation that ships its headers and library (when
//!    `MLX_BACKEND` is set, only one built for that backend);
//! 3. the pinned wheel of the backend (`mlx-cpu`, `mlx-cuda-13` with the CUDA libraries it
//!    needs, `mlx-metal`) installed by pip into a cache inside the target directory.

use std::collections::{BTreeSet, HashSet};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one place the MLX version is pinned.
const MLX_VERSION: &str = "0.32.4";

/// CUDA's libraries for `mlx-cuda-13`: what its requirements (`nvidia-cublas==13.*`, ...)
/// resolved to for MLX_VERSION, pinned too so that every CUDA build links and runs against the
/// same libraries. Bump them with MLX_VERSION: `pip install --dry-run --ignore-installed
/// --report r.json --target /tmp/x mlx-cuda-13==<version>` lists what it resolves to now.
const CUDA_LIBS: &[&str] = &[
    "nvidia-cublas==13.10.0.20",
    "nvidia-cuda-nvrtc==13.5.37",
    "nvidia-cuda-runtime==13.5.37",
    "nvidia-cudnn-cu13==9.28.1.4",
    "nvidia-cufft==12.5.0.14",
    "nvidia-cusolver==12.4.1.2",
    "nvidia-cusparse==12.9.4.2",
    "nvidia-nccl-cu13==2.32.3",
    "nvidia-nvjitlink==13.5.37",
    // Headers only: what cpp/fp8_gemm.cpp needs besides the ones above ship.
    "nvidia-cuda-crt==13.5.37",
    "nvidia-cuda-cccl==13.3.5.0.6",
];

/// The NVIDIA driver's library. It comes with the driver, never with a wheel, so a machine
/// without a GPU (a CI runner, a build host) does not have it.
const CUDA_DRIVER: &str = "libcuda.so.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Cpu,
    Cuda,
    Metal,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }

    /// The PyPI package of MLX's library for this backend.
    fn wheel(self) -> &'static str {
        match self {
            Backend::Cpu => "mlx-cpu",
            Backend::Cuda => "mlx-cuda-13",
            Backend::Metal => "mlx-metal",
        }
    }

    /// How a user installs it for Python, for error messages.
    fn python_package(self) -> String {
        match self {
            Backend::Cpu => format!("mlx-cpu=={MLX_VERSION}"),
            Backend::Cuda => format!("'mlx[cuda13]=={MLX_VERSION}'"),
            Backend::Metal => format!("mlx=={MLX_VERSION}"),
        }
    }
}

/// The backend asked for, and whether `MLX_BACKEND` asked (rather than the target's default).
struct Request {
    backend: Backend,
    explicit: bool,
}

struct Mlx {
    include: PathBuf,
    lib: PathBuf,
    origin: String,
    backend: Backend,
}

fn main() {
    println!("cargo:rerun-if-env-changed=MLX_BACKEND");
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    println!("cargo:rerun-if-env-changed=MLX_NO_OPENBLAS");
    println!("cargo:rerun-if-env-changed=PYTHON");
    println!("cargo:rerun-if-env-changed=PYTHONPATH");
    println!("cargo:rerun-if-changed=cpp/shim.cpp");
    println!("cargo:rerun-if-changed=cpp/shim.h");
    println!("cargo:rerun-if-changed=cpp/kernels.cpp");
    println!("cargo:rerun-if-changed=cpp/kernels.h");
    println!("cargo:rerun-if-changed=cpp/fp8_gemm.cpp");
    println!("cargo:rerun-if-changed=cpp/fp8_gemm.h");
    println!("cargo:rerun-if-changed=cpp/device_memory.cpp");
    println!("cargo:rerun-if-changed=cpp/device_memory.h");
    println!("cargo:rerun-if-changed=cpp/cuda_library.h");
    println!("cargo:rerun-if-changed=cpp/jit.cpp");
    println!("cargo:rerun-if-changed=cpp/jit.h");

    let request = match requested_backend() {
        Ok(request) => request,
        Err(why) => {
            eprintln!("error: {why}");
            std::process::exit(1);
        }
    };
    let mlx = match find_mlx(&request) {
        Ok(mlx) => mlx,
        Err(reasons) => {
            fail_to_find(&request, &reasons);
            std::process::exit(1);
        }
    };

    let openblas = if target_os() == "linux" && env::var_os("MLX_NO_OPENBLAS").is_none() {
        find_openblas()
    } else {
        None
    };

    let mut build = cc::Build::new();
    if openblas.is_some() {
        build.define("MLXS_OPENBLAS", None);
    }
    if mlx.backend == Backend::Cuda {
        build.define("MLXS_CUDA", None);
        match cuda_headers(&mlx) {
            Ok(include) => {
                // The files that call CUDA themselves. fmt: only for inline code of MLX's
                // CUDA headers, none of it called.
                build
                    .define("MLXS_CUDA_RUNTIME", None)
                    .define("FMT_HEADER_ONLY", None)
                    .flag("-isystem")
                    .flag(include.as_os_str())
                    .file("cpp/fp8_gemm.cpp")
                    .file("cpp/device_memory.cpp");
            }
            Err(why) => println!(
                "cargo:warning=mlx: built without the runtime's fused kernels (MLX's \
                 operations run instead), the FP8 tensor-core kernel (FP8 products \
                 dequantize) and with checkpoints loaded into managed memory: {why}"
            ),
        }
    }
    build
        .cpp(true)
        .std("c++20")
        // -isystem: MLX's own headers are not ours to warn about.
        .flag("-isystem")
        .flag(mlx.include.as_os_str())
        .file("cpp/shim.cpp")
        .file("cpp/kernels.cpp")
        .file("cpp/jit.cpp")
        .warnings(true)
        .extra_warnings(true)
        .compile("mlx_shim");

    link(&mlx, openblas.as_deref());
    if mlx.backend == Backend::Cuda && target_os() == "linux" {
        if let Err(why) = link_cuda(&mlx) {
            eprintln!(
                "error: linking the CUDA build of MLX at {}: {why}",
                mlx.lib.display()
            );
            std::process::exit(1);
        }
    }
}

fn target_os() -> String {
    env::var("CARGO_CFG_TARGET_OS").unwrap_or_default()
}

fn requested_backend() -> Result<Request, String> {
    let macos = target_os() == "macos";
    let default = if macos { Backend::Metal } else { Backend::Cpu };
    let value = match env::var("MLX_BACKEND") {
        Err(env::VarError::NotPresent) => String::new(),
        Err(env::VarError::NotUnicode(v)) => {
            return Err(format!(
                "MLX_BACKEND={v:?} is not a backend: use cpu or cuda"
            ));
        }
        Ok(v) => v,
    };
    let backend = match (value.trim(), macos) {
        ("", _) => {
            return Ok(Request {
                backend: default,
                explicit: false,
            })
        }
        ("cpu", false) => Backend::Cpu,
        ("cuda", false) => Backend::Cuda,
        ("metal", true) => Backend::Metal,
        ("cpu" | "cuda", true) => {
            return Err(format!(
                "MLX_BACKEND={value}: MLX on macOS runs on Metal; set MLX_BACKEND=metal or \
                 leave it unset"
            ))
        }
        ("metal", false) => {
            return Err(
                "MLX_BACKEND=metal: Metal is macOS only; on Linux use MLX_BACKEND=cpu (the \
                 default) or MLX_BACKEND=cuda"
                    .into(),
            )
        }
        (other, _) => {
            return Err(format!(
                "MLX_BACKEND={other:?} is not a backend: use {}",
                if macos {
                    "metal (the default)"
                } else {
                    "cpu (the default) or cuda"
                }
            ))
        }
    };
    Ok(Request {
        backend,
        explicit: true,
    })
}

fn fail_to_find(request: &Request, reasons: &[String]) {
    let backend = request.backend;
    if request.explicit {
        eprintln!(
            "error: could not find or install MLX {MLX_VERSION} for MLX_BACKEND={}.",
            backend.name()
        );
    } else {
        eprintln!("error: could not find or install MLX {MLX_VERSION}.");
    }
    eprintln!("Tried, in order:");
    for reason in reasons {
        eprintln!("  - {reason}");
    }
    let size = if backend == Backend::Cuda {
        " (mlx-cuda-13 and CUDA's libraries: about 2 GB to download, 3 GB installed)"
    } else {
        ""
    };
    eprintln!(
        "Fix one of them: set MLX_DIR to a directory with include/ and lib/, install the \
         Python package (`pip install {}`), or make `python3 -m pip` able to reach PyPI{size}.",
        backend.python_package()
    );
    if backend == Backend::Cuda {
        eprintln!("Or build for the CPU: unset MLX_BACKEND (or set MLX_BACKEND=cpu).");
    } else if target_os() != "macos" {
        eprintln!("For NVIDIA GPUs, build with MLX_BACKEND=cuda.");
    }
}

fn find_mlx(request: &Request) -> Result<Mlx, Vec<String>> {
    let wanted = request.backend;
    let mut reasons = Vec::new();
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        // An explicit MLX_DIR that is wrong is an error, not a reason to go online.
        let mlx = check_install(&dir).map_err(|why| {
            reasons.push(format!("MLX_DIR={}: {why}", dir.display()));
            reasons.clone()
        })?;
        // Two explicit choices that disagree: the user must settle it, not the build.
        if request.explicit && mlx.backend != wanted {
            reasons.push(format!(
                "MLX_DIR={} is MLX built for {}, but MLX_BACKEND={}: unset one of them",
                dir.display(),
                mlx.backend.name(),
                wanted.name()
            ));
            return Err(reasons);
        }
        return Ok(with_origin(mlx, "MLX_DIR"));
    }
    reasons.push("MLX_DIR is not set".into());

    match python_mlx_dir() {
        Ok(dir) => match check_install(&dir) {
            Ok(mlx) if request.explicit && mlx.backend != wanted => reasons.push(format!(
                "Python mlx at {} is built for {}, not {}",
                dir.display(),
                mlx.backend.name(),
                wanted.name()
            )),
            Ok(mlx) => return Ok(with_origin(mlx, "the Python mlx package")),
            Err(why) => reasons.push(format!("Python mlx at {}: {why}", dir.display())),
        },
        Err(why) => reasons.push(format!("Python mlx: {why}")),
    }

    match pip_install(wanted) {
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
    if target_os() == "macos" {
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
    let file = lib.join(lib_file_name());
    if !file.is_file() {
        return Err(format!("no {}", file.display()));
    }
    Ok(Mlx {
        include,
        backend: built_for(&file),
        lib,
        origin: String::new(),
    })
}

/// Which backend a `libmlx` was built with. MLX's macOS wheels are Metal builds; on Linux, a
/// CUDA build links the CUDA runtime or driver and a CPU build does not. (At run time the
/// library itself says: `mlx::build_info().backend`.)
fn built_for(lib: &Path) -> Backend {
    if target_os() == "macos" {
        return Backend::Metal;
    }
    match elf::dynamic(lib) {
        Ok(d) if d.needed.iter().any(|n| n.starts_with("libcuda")) => Backend::Cuda,
        _ => Backend::Cpu,
    }
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

/// Installs the pinned wheel of `backend` into `<target>/mlx-wheel/<package>-<version>/`
/// once; later builds (any profile) reuse it. The CUDA wheel comes with the CUDA libraries
/// its `libmlx.so` loads, installed side by side as in a Python `site-packages`, where the
/// library's own rpath (`$ORIGIN/../../nvidia/<lib>/lib`) looks for them.
fn pip_install(backend: Backend) -> Result<PathBuf, String> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let target = out_dir
        .ancestors()
        .nth(4)
        .ok_or("unexpected OUT_DIR layout")?
        .to_path_buf();
    let package = backend.wheel();
    let mut requirements = vec![format!("{package}=={MLX_VERSION}")];
    if backend == Backend::Cuda {
        requirements.extend(CUDA_LIBS.iter().map(|r| r.to_string()));
    }
    // The directory's name pins the wheel; this file pins the rest (CUDA's libraries), so a
    // change of CUDA_LIBS installs afresh instead of reusing stale libraries.
    const MARKER: &str = "mlx-rs-requirements.txt";
    let marker = requirements.join("\n") + "\n";
    let root = target
        .join("mlx-wheel")
        .join(format!("{package}-{MLX_VERSION}"));
    let mlx_dir = root.join("mlx");
    let usable = || {
        let current = match std::fs::read_to_string(root.join(MARKER)) {
            Ok(found) => found == marker,
            // Caches from before the marker hold one wheel, which the name pins.
            Err(_) => requirements.len() == 1,
        };
        current && check_install(&mlx_dir).is_ok()
    };
    if usable() {
        return Ok(mlx_dir);
    }
    // Install next to the final place and rename, so a concurrent or interrupted build
    // never sees half an install.
    let staging = target
        .join("mlx-wheel")
        .join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let mut pip = Command::new(python());
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        // Wheels only: nothing here should ever build from source.
        "--only-binary=:all:",
    ]);
    if requirements.len() == 1 {
        // MLX's library wheels need nothing else; Python's `mlx` package is not wanted.
        pip.arg("--no-deps");
    }
    // With dependencies, pip checks that the pins agree with the wheel's own requirements.
    let status = pip
        .arg("--target")
        .arg(&staging)
        .args(&requirements)
        .status()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python()))?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!(
            "`pip install {}` failed ({status})",
            requirements.join(" ")
        ));
    }
    std::fs::write(staging.join(MARKER), &marker)
        .map_err(|e| format!("writing {}: {e}", staging.join(MARKER).display()))?;
    if usable() {
        // Another build installed it meanwhile; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&staging);
        return Ok(mlx_dir);
    }
    // A stale (other pins) or broken install makes way. A failed rename means another
    // build won the race since the line above.
    let _ = std::fs::remove_dir_all(&root);
    if std::fs::rename(&staging, &root).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(mlx_dir)
}

fn link(mlx: &Mlx, openblas: Option<&Path>) {
    let lib = mlx.lib.display().to_string();
    // Reported by `mlx::build_info()`, so users can tell which MLX a binary runs on.
    println!("cargo:rustc-env=MLX_RS_ORIGIN={}", mlx.origin);
    println!("cargo:rustc-env=MLX_RS_LIBDIR={lib}");
    // What the build found; `build_info` asks the library itself and falls back to this.
    println!("cargo:rustc-env=MLX_RS_BACKEND={}", mlx.backend.name());
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
    println!("cargo:backend={}", mlx.backend.name());
}

/// What a CUDA `libmlx.so` needs beyond the CPU build: its CUDA libraries found at run time,
/// and a way to link it where the NVIDIA driver is absent.
/// The wheel's site-packages-like root (`<root>/mlx/lib/libmlx.so`), where CUDA's libraries
/// and headers sit in `nvidia/*/` when pip installed them.
fn wheel_root(mlx: &Mlx) -> PathBuf {
    mlx.lib
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| mlx.lib.clone())
}

/// The include directory with what the files that call CUDA need (its runtime and driver,
/// cuBLASLt, NVRTC, crt and CCCL headers), from the wheels beside MLX or a CUDA toolkit;
/// MLX's CUDA headers also include fmt's, from the system.
fn cuda_headers(mlx: &Mlx) -> Result<PathBuf, String> {
    let candidates = [
        wheel_root(mlx).join("nvidia/cu13/include"),
        PathBuf::from("/usr/local/cuda/include"),
    ];
    let needed = [
        "cuda_runtime.h",
        "cuda.h",
        "cublasLt.h",
        "nvrtc.h",
        "crt/host_config.h",
        "nv/target",
    ];
    let Some(include) = candidates
        .iter()
        .find(|dir| needed.iter().all(|file| dir.join(file).exists()))
    else {
        return Err(format!(
            "none of {} has all of {needed:?} (the nvidia-cuda-* wheels or a CUDA toolkit)",
            candidates.map(|c| c.display().to_string()).join(", ")
        ));
    };
    let fmt = ["/usr/include", "/usr/local/include"]
        .iter()
        .map(Path::new)
        .chain([include.as_path()])
        .any(|dir| dir.join("fmt/format.h").exists());
    if !fmt {
        return Err("fmt's headers are missing (Debian: apt-get install libfmt-dev)".into());
    }
    Ok(include.clone())
}

fn link_cuda(mlx: &Mlx) -> Result<(), String> {
    let libmlx = mlx.lib.join("libmlx.so");
    let root = wheel_root(mlx);
    let closure = elf::resolve(&libmlx)?;

    // Libraries the loader would miss: look for them under the root, and give the binaries
    // an rpath to where they are. DT_RPATH rather than DT_RUNPATH: only the former also
    // serves the libraries the executable loads (libmlx's own dependencies).
    let mut rpath = BTreeSet::new();
    let mut missing = Vec::new();
    for (name, needed_by) in &closure.missing {
        if name == CUDA_DRIVER {
            continue;
        }
        match find_under(&root, name) {
            Some(dir) => {
                rpath.insert(dir);
            }
            None => missing.push(format!("{name} (needed by {needed_by})")),
        }
    }
    if !rpath.is_empty() {
        let dirs: Vec<String> = rpath.iter().map(|d| d.display().to_string()).collect();
        println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
        for dir in &dirs {
            // The linker also looks in -rpath directories for libmlx's dependencies.
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
        // For other packages' binaries (the root build.rs reads DEP_MLX_RPATH).
        println!("cargo:rpath={}", dirs.join(":"));
    }
    if !missing.is_empty() {
        println!(
            "cargo:warning=mlx: {} needs libraries that neither its rpath nor {} has: {}. \
             Binaries will not start until they are installed where its rpath looks \
             (`pip install {}` installs them) or are on LD_LIBRARY_PATH.",
            libmlx.display(),
            root.display(),
            missing.join(", "),
            Backend::Cuda.python_package()
        );
    }

    if closure.missing.iter().any(|(name, _)| name == CUDA_DRIVER) {
        // No driver here: link against a stub that defines the driver functions libmlx
        // calls, with the driver's soname. Binaries then load the real driver at run time
        // (and fail to start, naming libcuda.so.1, where there is none), while the linker
        // still checks every other symbol. Unlike `--allow-shlib-undefined`, a link-lib
        // reaches every package's binaries, not only this crate's own.
        let stub = cuda_driver_stub(&closure.objects)?;
        println!("cargo:rustc-link-search=native={}", stub.display());
        println!("cargo:rustc-link-lib=dylib=cuda");
        println!(
            "cargo:warning=mlx: no NVIDIA driver ({CUDA_DRIVER}) on this machine: linked \
             against a stub of it; the binaries run where the driver is installed"
        );
    }
    Ok(())
}

/// A directory under `root` (`nvidia/*/lib`, `*.libs`) that holds `name`.
fn find_under(root: &Path, name: &str) -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("nvidia")) {
        dirs.extend(entries.flatten().map(|e| e.path().join("lib")));
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "libs")),
        );
    }
    dirs.sort();
    dirs.into_iter().find(|d| d.join(name).is_file())
}

/// Builds `OUT_DIR/cuda-stub/libcuda.so`: every driver function (`cu[A-Z]...`) that the
/// libraries needing libcuda.so.1 import, as an empty function, under the soname
/// libcuda.so.1. Named `libcuda.so` only, so that the loader never picks the stub up at run
/// time (Cargo puts this directory on `cargo test`'s library path) and looks for the real
/// `libcuda.so.1` instead.
fn cuda_driver_stub(objects: &[elf::Object]) -> Result<PathBuf, String> {
    let mut symbols = BTreeSet::new();
    for object in objects
        .iter()
        .filter(|o| o.dynamic.needed.iter().any(|n| n == CUDA_DRIVER))
    {
        for symbol in elf::undefined_symbols(&object.path)? {
            let b = symbol.as_bytes();
            if b.len() > 2 && b.starts_with(b"cu") && b[2].is_ascii_uppercase() {
                symbols.insert(symbol);
            }
        }
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR not set")?);
    let dir = out_dir.join("cuda-stub");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut source =
        String::from("/* Link-time stand-in for the NVIDIA driver: see build.rs. */\n");
    for symbol in &symbols {
        source.push_str(&format!("void {symbol}(void) {{}}\n"));
    }
    let c_file = dir.join("libcuda_stub.c");
    std::fs::write(&c_file, source).map_err(|e| format!("writing {}: {e}", c_file.display()))?;
    let lib = dir.join("libcuda.so");
    let compiler = cc::Build::new().cargo_metadata(false).get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(format!("-Wl,-soname,{CUDA_DRIVER}"))
        .arg(&c_file)
        .status()
        .map_err(|e| format!("running {}: {e}", compiler.path().display()))?;
    if !status.success() {
        return Err(format!(
            "compiling the driver stub {} failed",
            c_file.display()
        ));
    }
    Ok(dir)
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

/// Just enough of ELF (64-bit, little-endian: x86-64 and aarch64 Linux) to tell what a
/// shared library needs and where the dynamic loader will look for it, without depending on
/// binutils' `readelf` being installed. Reads headers and tables only, never whole files
/// (CUDA's libraries are hundreds of MB).
mod elf {
    use super::{HashSet, Path, PathBuf};
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};

    /// A table larger than this is not a sane shared library's.
    const MAX_TABLE: u64 = 256 << 20;

    #[derive(Default)]
    pub struct Dynamic {
        pub needed: Vec<String>,
        pub rpath: Vec<String>,
        pub runpath: Vec<String>,
    }

    pub struct Object {
        pub path: PathBuf,
        pub dynamic: Dynamic,
    }

    /// The shared libraries a library loads, as the dynamic loader would find them.
    pub struct Closure {
        /// The library and every dependency found outside the system's directories.
        pub objects: Vec<Object>,
        /// Sonames found nowhere, with the file that needs each.
        pub missing: Vec<(String, String)>,
    }

    struct Header {
        phoff: u64,
        phentsize: u64,
        phnum: u64,
        shoff: u64,
        shentsize: u64,
        shnum: u64,
    }

    fn read_at(file: &mut File, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        if len > MAX_TABLE {
            return Err(format!("a table of {len} bytes"));
        }
        let mut buf = vec![0; len as usize];
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| format!("reading {len} bytes at {offset}: {e}"))?;
        Ok(buf)
    }

    fn u16_at(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 2)
            .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]) as u64)
    }

    fn u32_at(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 4).map_or(0, |s| {
            u32::from_le_bytes(s.try_into().unwrap_or_default()) as u64
        })
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        b.get(at..at + 8)
            .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
    }

    fn c_str(table: &[u8], at: u64) -> Option<String> {
        let rest = table.get(at as usize..)?;
        let end = rest.iter().position(|&c| c == 0)?;
        Some(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    fn header(file: &mut File) -> Result<Header, String> {
        let h = read_at(file, 0, 64)?;
        if &h[..4] != b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        if h[4] != 2 || h[5] != 1 {
            return Err("not a 64-bit little-endian ELF file".into());
        }
        Ok(Header {
            phoff: u64_at(&h, 0x20),
            shoff: u64_at(&h, 0x28),
            phentsize: u16_at(&h, 0x36),
            phnum: u16_at(&h, 0x38),
            shentsize: u16_at(&h, 0x3a),
            shnum: u16_at(&h, 0x3c),
        })
    }

    /// DT_NEEDED, DT_RPATH and DT_RUNPATH of `path`.
    pub fn dynamic(path: &Path) -> Result<Dynamic, String> {
        dynamic_of(path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn dynamic_of(path: &Path) -> Result<Dynamic, String> {
        const PT_LOAD: u64 = 1;
        const PT_DYNAMIC: u64 = 2;
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let h = header(&mut file)?;
        let phdrs = read_at(&mut file, h.phoff, h.phentsize * h.phnum)?;
        // (type, file offset, virtual address, size in the file) of each segment.
        let segments: Vec<(u64, u64, u64, u64)> = (0..h.phnum as usize)
            .map(|i| {
                let p = &phdrs[i * h.phentsize as usize..];
                (u32_at(p, 0), u64_at(p, 8), u64_at(p, 16), u64_at(p, 32))
            })
            .collect();
        let Some(&(_, dyn_off, _, dyn_size)) = segments.iter().find(|s| s.0 == PT_DYNAMIC) else {
            return Ok(Dynamic::default()); // statically linked: needs nothing
        };
        let entries = read_at(&mut file, dyn_off, dyn_size)?;
        let (mut strtab, mut strsz) = (0, 0);
        let mut tags = Vec::new();
        for entry in entries.chunks_exact(16) {
            let (tag, value) = (u64_at(entry, 0), u64_at(entry, 8));
            match tag {
                0 => break,
                5 => strtab = value,
                10 => strsz = value,
                1 | 15 | 29 => tags.push((tag, value)),
                _ => {}
            }
        }
        // DT_STRTAB is an address: the loadable segment that maps it gives its file offset.
        let offset = segments
            .iter()
            .find(|&&(kind, _, vaddr, size)| {
                kind == PT_LOAD && vaddr <= strtab && strtab < vaddr + size
            })
            .map(|&(_, off, vaddr, _)| strtab - vaddr + off)
            .ok_or("no segment maps the dynamic string table")?;
        let table = read_at(&mut file, offset, strsz)?;
        let mut d = Dynamic::default();
        for (tag, at) in tags {
            let s = c_str(&table, at).ok_or("a dynamic string out of range")?;
            match tag {
                1 => d.needed.push(s),
                15 => d.rpath.extend(s.split(':').map(str::to_owned)),
                _ => d.runpath.extend(s.split(':').map(str::to_owned)),
            }
        }
        Ok(d)
    }

    /// The names of the symbols `path` imports (undefined in its dynamic symbol table).
    pub fn undefined_symbols(path: &Path) -> Result<Vec<String>, String> {
        undefined_of(path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn undefined_of(path: &Path) -> Result<Vec<String>, String> {
        const SHT_DYNSYM: u64 = 11;
        let mut file = File::open(path).map_err(|e| e.to_string())?;
        let h = header(&mut file)?;
        let shdrs = read_at(&mut file, h.shoff, h.shentsize * h.shnum)?;
        let section = |i: usize| &shdrs[(i * h.shentsize as usize).min(shdrs.len())..];
        let Some(dynsym) = (0..h.shnum as usize).find(|&i| u32_at(section(i), 4) == SHT_DYNSYM)
        else {
            return Ok(Vec::new());
        };
        let s = section(dynsym);
        let (sym_off, sym_size, link) = (u64_at(s, 24), u64_at(s, 32), u32_at(s, 40));
        if link >= h.shnum {
            return Err("the dynamic symbols' string table is out of range".into());
        }
        let t = section(link as usize);
        let strings = read_at(&mut file, u64_at(t, 24), u64_at(t, 32))?;
        let symbols = read_at(&mut file, sym_off, sym_size)?;
        Ok(symbols
            .chunks_exact(24)
            // st_shndx == SHN_UNDEF: imported, not defined here.
            .filter(|sym| u16_at(sym, 6) == 0)
            .filter_map(|sym| c_str(&strings, u32_at(sym, 0)))
            .filter(|name| !name.is_empty())
            .collect())
    }

    /// Where glibc's loader looks after the rpaths: the default directories and those of
    /// /etc/ld.so.conf(.d). LD_LIBRARY_PATH is left out on purpose: binaries must start
    /// without it.
    fn system_dirs() -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = [
            "/lib",
            "/usr/lib",
            "/lib64",
            "/usr/lib64",
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let mut confs = vec![PathBuf::from("/etc/ld.so.conf")];
        if let Ok(entries) = std::fs::read_dir("/etc/ld.so.conf.d") {
            confs.extend(entries.flatten().map(|e| e.path()));
        }
        for conf in confs {
            let text = std::fs::read_to_string(conf).unwrap_or_default();
            dirs.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
        dirs
    }

    /// Follows `lib`'s dependencies as glibc's loader would when `lib` is loaded by an
    /// executable without an rpath of its own for them: an object's DT_RUNPATH if it has
    /// one, else its DT_RPATH and those of the objects that loaded it; `$ORIGIN` is the
    /// object's directory; then the system's directories. Dependencies found in the
    /// system's directories are not followed further.
    pub fn resolve(lib: &Path) -> Result<Closure, String> {
        let system = system_dirs();
        let mut closure = Closure {
            objects: Vec::new(),
            missing: Vec::new(),
        };
        let mut seen = HashSet::new();
        // (object, DT_RPATH directories inherited from the objects that loaded it)
        let mut queue = vec![(lib.to_path_buf(), Vec::<PathBuf>::new())];
        while let Some((path, inherited)) = queue.pop() {
            let dynamic = dynamic(&path)?;
            let origin = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let expand = |entries: &[String]| -> Vec<PathBuf> {
                let origin = origin.to_string_lossy();
                entries
                    .iter()
                    .filter(|e| !e.is_empty())
                    .map(|e| {
                        PathBuf::from(e.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
                    })
                    .collect()
            };
            // An object with DT_RUNPATH ignores its own and its loaders' DT_RPATH, and
            // passes none of its own on.
            let (chain, dirs) = if dynamic.runpath.is_empty() {
                let mut chain = expand(&dynamic.rpath);
                chain.extend(inherited);
                (chain.clone(), chain)
            } else {
                (inherited, expand(&dynamic.runpath))
            };
            for name in &dynamic.needed {
                if !seen.insert(name.clone()) {
                    continue;
                }
                if let Some(dir) = dirs.iter().find(|d| d.join(name).is_file()) {
                    queue.push((dir.join(name), chain.clone()));
                } else if !system.iter().any(|d| d.join(name).is_file()) {
                    closure
                        .missing
                        .push((name.clone(), path.display().to_string()));
                }
            }
            closure.objects.push(Object { path, dynamic });
        }
        Ok(closure)
    }
}
