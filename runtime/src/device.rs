//! Where computations run: the backend MLX was built with, the devices it sees, and the
//! default device.
//!
//! The backend is a property of the linked `libmlx` (`cpu`, `cuda` or `metal`: see
//! [`Backend`]); whether a GPU is there to run on is a property of the machine, asked at run
//! time ([`gpu_available`]). A CUDA build started on a machine whose GPUs are hidden
//! (`CUDA_VISIBLE_DEVICES=""`) has the `cuda` backend and no GPU; ops then run on the CPU.
//!
//! ```
//! let device = mlx_runtime::preferred_device(); // the GPU where there is one
//! mlx_runtime::set_default_device(device).unwrap();
//! let info = device.info().unwrap();
//! println!("{device} ({}) on MLX's {} backend", info.name.unwrap_or_default(), mlx_runtime::backend());
//! ```

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::fmt;
use std::panic::Location;
use std::str::FromStr;

use crate::error::check;
use crate::sys;
use crate::{Error, Result};

// The shim's device queries added with the backend (`cpp/shim.h`); the older ones are in
// `sys`.
extern "C" {
    fn mlxs_backend(backend: *mut c_int) -> c_int;
    fn mlxs_device_count(kind: c_int, count: *mut c_int) -> c_int;
    fn mlxs_device_info(kind: c_int, index: c_int, s: *mut *const c_char, len: *mut usize)
        -> c_int;
}

/// The backend the linked MLX library was built with: what it can run on, given the
/// hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// CPU only (the `mlx-cpu` wheel, Linux's default build).
    Cpu,
    /// NVIDIA GPUs through CUDA, and the CPU (the `mlx-cuda-13` wheel, `MLX_BACKEND=cuda`).
    Cuda,
    /// Apple GPUs through Metal, and the CPU (macOS).
    Metal,
}

impl Backend {
    /// `cpu`, `cuda` or `metal`: the names `MLX_BACKEND` takes.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }

    /// Whether this backend can run on a GPU at all (whether one is there is
    /// [`gpu_available`]'s question).
    pub fn has_gpu(self) -> bool {
        self != Backend::Cpu
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend of the linked MLX, as the library itself reports it.
pub fn backend() -> Backend {
    let mut code = -1;
    // SAFETY: out-parameter.
    let status = unsafe { mlxs_backend(&mut code) };
    match (status, code) {
        (0, 0) => Backend::Cpu,
        (0, 1) => Backend::Cuda,
        (0, 2) => Backend::Metal,
        // Cannot happen with the shim as written; what the build found is the next best
        // answer, and a query about the build is no reason to fail.
        _ => match env!("MLX_RS_BACKEND") {
            "cuda" => Backend::Cuda,
            "metal" => Backend::Metal,
            _ => Backend::Cpu,
        },
    }
}

/// How many GPUs MLX can run on now: 0 with a CPU-only build, and with a GPU build on a
/// machine where it finds none (no device visible, or no driver).
pub fn gpu_count() -> usize {
    let mut count = 0;
    // SAFETY: out-parameter.
    let status = unsafe { mlxs_device_count(1, &mut count) };
    if status == 0 {
        usize::try_from(count).unwrap_or(0)
    } else {
        0
    }
}

/// Whether a GPU is there to run on now (see [`gpu_count`]).
pub fn gpu_available() -> bool {
    gpu_count() > 0
}

/// The device to run on unless the user says otherwise: the first GPU where MLX has one
/// ([`gpu_available`]), else the CPU. Commands use it as their `--device` default.
pub fn preferred_device() -> Device {
    if gpu_available() {
        Device::Gpu(0)
    } else {
        Device::Cpu
    }
}

/// A processor MLX runs on.
///
/// Parses from `cpu`, `gpu` (the first GPU) and `gpu:N`, and displays the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A GPU (Metal on macOS, CUDA on Linux builds of MLX that have it), by index.
    Gpu(i32),
}

impl Device {
    fn to_raw(self) -> (i32, i32) {
        match self {
            Device::Cpu => (0, 0),
            Device::Gpu(index) => (1, index),
        }
    }

    /// Whether this build of MLX can run on the device, on this machine, now.
    pub fn is_available(self) -> bool {
        self.unavailable_because().is_none()
    }

    /// Why the device cannot be used, or `None` when it can.
    fn unavailable_because(self) -> Option<String> {
        let index = match self {
            Device::Cpu => return None,
            Device::Gpu(index) => index,
        };
        // MLX compares the index with the device count only, so a negative one would pass.
        if index < 0 {
            return Some(format!("{self:?} is not a device: GPU indices start at 0"));
        }
        let backend = backend();
        if !backend.has_gpu() {
            return Some(format!(
                "{self:?} is not available: no GPU: this MLX was built for {backend}"
            ));
        }
        let count = gpu_count();
        if count == 0 {
            return Some(format!(
                "{self:?} is not available: this MLX was built for {backend} but finds no \
                 GPU on this machine (none visible, or no driver)"
            ));
        }
        if index as usize >= count {
            let plural = if count == 1 { "" } else { "s" };
            return Some(format!(
                "{self:?} is not available: this machine has {count} GPU{plural} (Gpu(0)..Gpu({}))",
                count - 1
            ));
        }
        // Whatever else MLX itself would refuse.
        let (kind, index) = self.to_raw();
        let mut available = 0;
        // SAFETY: out-parameter.
        let status = unsafe { sys::mlxs_device_available(kind, index, &mut available) };
        if status == 0 && available != 0 {
            None
        } else {
            Some(format!("{self:?} is not available in this build of MLX"))
        }
    }

    /// What MLX reports about the device: its name, architecture and memory where the
    /// backend tells. `Err` for a device that is not available (see [`Device::is_available`]).
    #[track_caller]
    pub fn info(self) -> Result<DeviceInfo> {
        if let Some(message) = self.unavailable_because() {
            return Err(Error::Runtime {
                op: "device_info",
                message,
                location: Location::caller(),
            });
        }
        let (kind, index) = self.to_raw();
        let mut ptr = std::ptr::null();
        let mut len = 0usize;
        // SAFETY: out-parameters; the shim's buffer is copied out before any other call.
        check("device_info", unsafe {
            mlxs_device_info(kind, index, &mut ptr, &mut len)
        })?;
        let bytes = if ptr.is_null() || len == 0 {
            &[][..]
        } else {
            // SAFETY: the shim returns `len` bytes in a thread-local buffer that stays valid
            // until the next shim call on this thread.
            unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
        };
        Ok(DeviceInfo::parse(self, bytes))
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Gpu(index) => write!(f, "gpu:{index}"),
        }
    }
}

/// A string that names no device (see [`Device`]'s `FromStr`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a device: use cpu, gpu (the first GPU) or gpu:N")]
pub struct ParseDeviceError {
    /// The string given.
    pub value: String,
}

impl FromStr for Device {
    type Err = ParseDeviceError;

    /// `cpu`, `gpu` or `gpu:N` (N from 0), in any case. Parsing says nothing about whether
    /// the device is there: [`set_default_device`] does.
    fn from_str(s: &str) -> std::result::Result<Device, ParseDeviceError> {
        let lower = s.trim().to_ascii_lowercase();
        let fail = || ParseDeviceError {
            value: s.to_string(),
        };
        match lower.as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu(0)),
            other => {
                let index = other.strip_prefix("gpu:").ok_or_else(fail)?;
                // Digits only: `gpu:-1` and `gpu:+1` are not names of a GPU.
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(fail());
                }
                index.parse().map(Device::Gpu).map_err(|_| fail())
            }
        }
    }
}

/// A value in [`DeviceInfo::properties`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceProperty {
    Text(String),
    Number(u64),
}

impl fmt::Display for DeviceProperty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceProperty::Text(text) => f.write_str(text),
            DeviceProperty::Number(n) => write!(f, "{n}"),
        }
    }
}

/// What MLX reports about a device ([`Device::info`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceInfo {
    pub device: Device,
    /// The device's model: the GPU's (`NVIDIA H200`, `Apple M3 Max`) or the CPU's.
    pub name: Option<String>,
    /// `sm_90` on CUDA, the GPU family on Metal, the CPU architecture on the CPU.
    pub architecture: Option<String>,
    /// The device's memory in bytes, where the backend reports it (CUDA, Metal).
    pub total_memory: Option<u64>,
    /// Everything MLX reports, by MLX's keys (they vary by backend: `uuid`,
    /// `free_memory`, `compute_capability_major` on CUDA, ...).
    pub properties: BTreeMap<String, DeviceProperty>,
}

impl DeviceInfo {
    /// Reads the shim's `key\0kind\0value\0` triples; a malformed tail is ignored rather
    /// than trusted.
    fn parse(device: Device, bytes: &[u8]) -> DeviceInfo {
        let mut properties = BTreeMap::new();
        let mut fields = bytes.split(|&b| b == 0);
        while let (Some(key), Some(kind), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        {
            let key = String::from_utf8_lossy(key).into_owned();
            let text = String::from_utf8_lossy(value).into_owned();
            let value = match (kind, text.parse()) {
                (b"n", Ok(n)) => DeviceProperty::Number(n),
                _ => DeviceProperty::Text(text),
            };
            properties.insert(key, value);
        }
        let text = |key: &str| match properties.get(key) {
            Some(DeviceProperty::Text(t)) if !t.is_empty() => Some(t.clone()),
            _ => None,
        };
        let number = |key: &str| match properties.get(key) {
            Some(DeviceProperty::Number(n)) => Some(*n),
            _ => None,
        };
        DeviceInfo {
            device,
            name: text("device_name"),
            architecture: text("architecture"),
            // CUDA says total_memory, Metal memory_size.
            total_memory: number("total_memory").or_else(|| number("memory_size")),
            properties,
        }
    }
}

/// Where ops run unless told otherwise: MLX's default, the GPU when it has one, else the
/// CPU.
#[track_caller]
pub fn default_device() -> Result<Device> {
    let (mut kind, mut index) = (0, 0);
    // SAFETY: out-parameters.
    check("default_device", unsafe {
        sys::mlxs_default_device(&mut kind, &mut index)
    })?;
    Ok(if kind == 1 {
        Device::Gpu(index)
    } else {
        Device::Cpu
    })
}

/// Makes `device` the default for ops built from now on, on every thread. Set it before
/// other threads build graphs: MLX reads the default device without synchronization.
///
/// A device that is not there is an `Err` saying why (`Gpu(0) is not available: no GPU:
/// this MLX was built for cpu`), and the default stays as it was.
#[track_caller]
pub fn set_default_device(device: Device) -> Result<()> {
    if let Some(message) = device.unavailable_because() {
        return Err(Error::Runtime {
            op: "set_default_device",
            message,
            location: Location::caller(),
        });
    }
    let (kind, index) = device.to_raw();
    // SAFETY: plain values.
    check("set_default_device", unsafe {
        sys::mlxs_set_default_device(kind, index)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_info_parsing_keeps_kinds_and_skips_a_torn_tail() {
        let bytes =
            b"device_name\0s\0NVIDIA H200\0total_memory\0n\x00150\0architecture\0s\0sm_90\0torn\0s";
        let info = DeviceInfo::parse(Device::Gpu(0), bytes);
        assert_eq!(info.name.as_deref(), Some("NVIDIA H200"));
        assert_eq!(info.architecture.as_deref(), Some("sm_90"));
        assert_eq!(info.total_memory, Some(150));
        assert_eq!(info.properties.len(), 3);
        assert!(!info.properties.contains_key("torn"));
        let empty = DeviceInfo::parse(Device::Cpu, b"");
        assert_eq!((empty.name, empty.total_memory), (None, None));
    }

    #[test]
    fn metal_reports_memory_as_memory_size() {
        let info = DeviceInfo::parse(Device::Gpu(0), b"memory_size\0n\x007\0");
        assert_eq!(info.total_memory, Some(7));
    }
}
