//! Computing arrays, and where computations run.

use std::panic::Location;

use crate::array_list::ArrayList;
use crate::error::check;
use crate::eval_lock::lock;
use crate::sys;
use crate::{Array, Error, Result};

/// Computes `arrays` (and whatever they depend on), waiting for the result.
///
/// Returns the error of the first failed array, if any.
#[track_caller]
pub fn eval<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    run("eval", arrays, sys::mlxs_eval)
}

/// Schedules the computation of `arrays` and returns at once; reading their data later
/// waits for it. Lets the CPU build the next graph while this one computes.
#[track_caller]
pub fn async_eval<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    run("async_eval", arrays, sys::mlxs_async_eval)
}

#[track_caller]
fn run<'a>(
    op: &'static str,
    arrays: impl IntoIterator<Item = &'a Array>,
    call: unsafe extern "C" fn(*const sys::mlxs_vec) -> i32,
) -> Result<()> {
    let list = ArrayList::of(arrays)?;
    let _guard = lock();
    // SAFETY: live list of live handles.
    check(op, unsafe { call(list.as_ptr()) })
}

/// Waits until everything scheduled on the default stream has finished.
#[track_caller]
pub fn synchronize() -> Result<()> {
    let _guard = lock();
    // SAFETY: no arguments.
    check("synchronize", unsafe { sys::mlxs_synchronize() })
}

impl Array {
    /// Computes this array (see [`eval`]).
    #[track_caller]
    pub fn eval(&self) -> Result<()> {
        eval([self])
    }
}

/// A processor MLX runs on.
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

    /// Whether this build of MLX can run on the device.
    pub fn is_available(self) -> bool {
        let (kind, index) = self.to_raw();
        let mut available = 0;
        // SAFETY: out-parameter.
        let status = unsafe { sys::mlxs_device_available(kind, index, &mut available) };
        status == 0 && available != 0
    }
}

/// Where ops run unless told otherwise: the GPU when MLX has one, else the CPU.
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
#[track_caller]
pub fn set_default_device(device: Device) -> Result<()> {
    if !device.is_available() {
        return Err(Error::Runtime {
            op: "set_default_device",
            message: format!("{device:?} is not available in this build of MLX"),
            location: Location::caller(),
        });
    }
    let (kind, index) = device.to_raw();
    // SAFETY: plain values.
    check("set_default_device", unsafe {
        sys::mlxs_set_default_device(kind, index)
    })
}
