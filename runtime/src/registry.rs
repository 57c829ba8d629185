//! The registry of arrays that step loops track, and each thread's open frame.
//!
//! A leaf module (beside `sys` and the tracing depth), so that `Array`, which registers
//! itself when made and leaves when dropped, does not depend on `scope`, which needs
//! `ArrayList`, which needs `Array`.

use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};

use crate::sys::{self, mlxs_array};
use crate::trace_depth::is_tracing;

/// An array's entry in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TrackId(NonZeroU32);

/// The frame of arrays that outlived every loop that tracked them. They stay registered
/// until dropped, so that their entries are never reused under them.
pub(crate) const ROOT: u64 = 0;

pub(crate) struct Entry {
    /// The array's handle; valid while the entry exists, because the array's drop removes
    /// the entry (under the registry lock) before freeing the handle.
    pub(crate) handle: usize,
    pub(crate) frame: u64,
}

#[derive(Default)]
struct Registry {
    /// Slot `i` is `TrackId(i + 1)`.
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    slots: Vec::new(),
    free: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // Registry updates cannot panic halfway, so a poisoned lock still holds a valid registry.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    /// The innermost open frame of this thread, `ROOT` when none is open.
    static CURRENT: Cell<u64> = const { Cell::new(ROOT) };
}

/// The innermost open frame of this thread, `ROOT` when none is open.
pub(crate) fn current_frame() -> u64 {
    CURRENT.with(Cell::get)
}

/// Makes `frame` the one this thread's new arrays register in.
pub(crate) fn set_current_frame(frame: u64) {
    CURRENT.with(|c| c.set(frame));
}

/// Registers a new array handle in this thread's open frame, if any.
pub(crate) fn track(handle: *const mlxs_array) -> Option<TrackId> {
    let frame = current_frame();
    if frame == ROOT || is_tracing() {
        return None;
    }
    let mut registry = registry();
    let entry = Some(Entry {
        handle: handle as usize,
        frame,
    });
    let index = match registry.free.pop() {
        Some(index) => {
            registry.slots[index as usize] = entry;
            index
        }
        None => {
            registry.slots.push(entry);
            u32::try_from(registry.slots.len() - 1).ok()?
        }
    };
    NonZeroU32::new(index + 1).map(TrackId)
}

/// Removes a dropped array from the registry.
pub(crate) fn untrack(id: TrackId) {
    let index = id.0.get() - 1;
    let mut registry = registry();
    if let Some(slot) = registry.slots.get_mut(index as usize) {
        *slot = None;
        registry.free.push(index);
    }
}

/// Calls `each` with every entry of `frame`; returns their count and bytes.
pub(crate) fn scan(frame: u64, mut each: impl FnMut(&mut Entry)) -> (usize, usize) {
    let (mut count, mut bytes) = (0, 0);
    for entry in registry().slots.iter_mut().flatten() {
        if entry.frame == frame {
            count += 1;
            // SAFETY: the entry exists, so its handle is alive while we hold the lock.
            bytes += unsafe { sys::mlxs_array_nbytes(entry.handle as *const mlxs_array) };
            each(entry);
        }
    }
    (count, bytes)
}

/// Calls `each` with every entry, under one hold of the lock, so that every handle it sees
/// stays alive until it returns.
pub(crate) fn for_each(mut each: impl FnMut(&Entry)) {
    for entry in registry().slots.iter().flatten() {
        each(entry);
    }
}
