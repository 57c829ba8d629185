//! Backends and devices: what the linked MLX was built for, whether a GPU is there, and
//! that asking for a device that is not there is a clear `Err`, never an abort.
//!
//! CI and this project's development machine have no GPU, so the no-GPU paths are the ones
//! that run there; each test also states what must hold where a GPU is present, so the same
//! file checks a CUDA or Metal build on a GPU machine instead of skipping.

use mlx::{Array, Backend, Device, Dtype, Error};

/// `$e` and the line it is written on.
macro_rules! here {
    ($e:expr) => {
        ($e, line!())
    };
}

/// `err` is `Error::Runtime` from `op` at `line` of this file, with `needle` in its message.
#[track_caller]
fn assert_runtime_error(err: Error, op: &str, needle: &str, line: u32) {
    let text = err.to_string();
    match err {
        Error::Runtime {
            op: got,
            message,
            location,
        } => {
            assert_eq!(got, op, "{text}");
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
            assert_eq!(
                (location.file(), location.line()),
                (file!(), line),
                "{text}"
            );
        }
        other => panic!("expected Error::Runtime from {op}, got {other:?}"),
    }
}

#[test]
fn devices_parse_from_their_names() {
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert_eq!("gpu".parse::<Device>(), Ok(Device::Gpu(0)));
    assert_eq!(" GPU:1 ".parse::<Device>(), Ok(Device::Gpu(1)));
    assert_eq!("gpu:0".parse::<Device>(), Ok(Device::Gpu(0)));
    for device in [Device::Cpu, Device::Gpu(0), Device::Gpu(3)] {
        assert_eq!(device.to_string().parse::<Device>(), Ok(device), "{device}");
    }
}

#[test]
fn a_string_that_names_no_device_is_an_error_naming_it() {
    for bad in [
        "cuda",
        "metal",
        "",
        "gpu:",
        "gpu:-1",
        "gpu:+1",
        "gpu:x",
        "gpu:99999999999",
    ] {
        let err = bad.parse::<Device>().unwrap_err();
        assert_eq!(err.value, bad);
        let text = err.to_string();
        assert!(text.contains(&format!("{bad:?}")), "{text}");
        assert!(text.contains("use cpu, gpu"), "{text}");
    }
}

#[test]
fn build_info_reports_the_backend_the_library_reports() {
    let info = mlx::build_info();
    assert_eq!(info.backend, mlx::backend());
    assert_eq!(
        info.backend.to_string(),
        info.backend.name(),
        "Display is the MLX_BACKEND name"
    );
    assert!(["cpu", "cuda", "metal"].contains(&info.backend.name()));
    // Where a GPU is there, the backend must be able to drive one.
    if mlx::gpu_available() {
        assert!(info.backend.has_gpu(), "{:?} with a GPU", info.backend);
    }
    if info.backend == Backend::Cpu {
        assert_eq!(mlx::gpu_count(), 0);
        assert!(!mlx::gpu_available());
    }
}

#[test]
fn the_preferred_device_is_the_gpu_where_there_is_one() {
    let preferred = mlx::preferred_device();
    if mlx::gpu_available() {
        assert_eq!(preferred, Device::Gpu(0));
    } else {
        assert_eq!(preferred, Device::Cpu);
    }
    assert!(preferred.is_available());
    // Where MLX sees no GPU its own default is the CPU too, even in a CUDA build (the shim
    // moves it off a GPU that is not there).
    mlx::set_default_device(preferred).unwrap();
    assert_eq!(mlx::default_device().unwrap(), preferred);
    let y = (Array::ones(&[4], Dtype::F32) * 3.0).sum(mlx::ALL, false);
    assert_eq!(y.item::<f32>().unwrap(), 12.0);
}

/// The check this project's machines (no GPU) exercise: a GPU asked of a build or machine
/// without one is refused with the reason, at the caller's line, and the default device
/// stays as it was.
#[test]
fn asking_for_a_gpu_that_is_not_there_is_an_error() {
    let count = mlx::gpu_count();
    // Without a GPU the first one is missing; with N, the (N+1)th.
    let missing = Device::Gpu(count as i32);
    let reason = match (mlx::backend(), count) {
        (Backend::Cpu, _) => "no GPU: this MLX was built for cpu".to_string(),
        (backend, 0) => format!("this MLX was built for {backend} but finds no GPU"),
        (_, n) => format!("this machine has {n} GPU"),
    };
    assert!(!missing.is_available());
    let before = mlx::default_device().unwrap();
    let (result, line) = here!(mlx::set_default_device(missing));
    let err = result.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{missing:?} is not available")),
        "{err}"
    );
    assert_runtime_error(err, "set_default_device", &reason, line);
    assert_eq!(mlx::default_device().unwrap(), before);

    let (result, line) = here!(missing.info());
    assert_runtime_error(result.unwrap_err(), "device_info", &reason, line);

    // Still usable afterwards.
    let y = Array::from_slice(&[1.0f32, 2.0], &[2]).sum(mlx::ALL, false);
    assert_eq!(y.item::<f32>().unwrap(), 3.0);
}

#[test]
fn a_negative_gpu_index_is_refused_on_every_build() {
    assert!(!Device::Gpu(-1).is_available());
    let (result, line) = here!(mlx::set_default_device(Device::Gpu(-1)));
    assert_runtime_error(
        result.unwrap_err(),
        "set_default_device",
        "GPU indices start at 0",
        line,
    );
}

#[test]
fn the_cpu_describes_itself() {
    assert!(Device::Cpu.is_available());
    let info = Device::Cpu.info().unwrap();
    assert_eq!(info.device, Device::Cpu);
    let name = info.name.expect("MLX names the CPU");
    assert!(!name.trim().is_empty());
    let arch = info.architecture.expect("MLX gives the CPU's architecture");
    assert!(!arch.is_empty());
    assert_eq!(
        info.properties.get("device_name").map(ToString::to_string),
        Some(name)
    );
}

#[test]
fn an_available_gpu_has_a_name() {
    if !mlx::gpu_available() {
        // Nothing to describe here; the no-GPU side is checked above.
        assert!(Device::Gpu(0).info().is_err());
        return;
    }
    let info = Device::Gpu(0).info().unwrap();
    assert!(
        info.name.as_ref().is_some_and(|n| !n.is_empty()),
        "{info:?}"
    );
}
