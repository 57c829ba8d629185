//! MLX's allocator statistics and limits, through `mlx::memory`.
//!
//! The counters are process-wide and `cargo test` runs this file's tests on several
//! threads of one process, so every test holds [`serial`] for its whole run: no other test
//! allocates or changes a limit while one measures. (Other test files are other processes
//! and cannot disturb these counters.) Limits a test changes are put back by [`Restore`],
//! even when an assertion fails.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mlx::memory::{
    active_memory, cache_memory, clear_cache, live_arrays, memory_limit, peak_memory,
    reset_peak_memory, set_cache_limit, set_memory_limit, set_wired_limit,
};
use mlx::{Array, Dtype};

// === helpers ==================================================================================

/// Serializes the tests of this file (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs its closure when dropped: puts a limit back whatever happens in the test.
struct Restore<F: FnMut()>(F);

impl<F: FnMut()> Drop for Restore<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

const MIB: usize = 1 << 20;

/// An evaluated float32 vector of `n` elements (`n * 4` bytes of active memory).
fn evaluated(n: i32) -> Array {
    let a = Array::ones(&[n], Dtype::F32);
    a.eval().unwrap();
    a
}

/// Active memory once pending work has finished and its buffers are released: the
/// scheduler frees a finished task's buffers after `synchronize` may have returned (the
/// last test's arrays can still be leaving), so wait until two readings a moment apart
/// agree.
fn settled() -> usize {
    mlx::synchronize().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = active_memory();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let active = active_memory();
        if active == last || Instant::now() > deadline {
            return active;
        }
        last = active;
    }
}

/// Waits for pending work and for active memory to come down to `target`; returns the
/// last reading. Buffers are released when the scheduler is done with them, so allow a
/// moment before a mismatch counts.
fn settle_to(target: usize) -> usize {
    mlx::synchronize().unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let active = active_memory();
        if active == target || Instant::now() > deadline {
            return active;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// === tests ====================================================================================

/// 10,000 arrays (each allocating 4 KiB and computing a 4 KiB result), evaluated and
/// dropped, leave active memory exactly where it was; while alive they are counted.
#[test]
fn dropped_arrays_return_active_memory_to_baseline() {
    let _serial = serial();
    let data: Vec<f32> = (0..1024).map(|i| i as f32).collect();
    let round = |data: &[f32]| {
        let a = Array::from_slice(data, &[1024]);
        let b = &a * 2.0 + 1.0;
        b.eval().unwrap();
        (a, b)
    };
    // Warm up MLX (streams, scalar constants, the allocator), and keep one array resident
    // so the baseline is not zero.
    for _ in 0..16 {
        round(&data);
    }
    let resident = evaluated(4096);
    let baseline = settled();
    assert!(
        baseline >= 4096 * 4,
        "the resident array is not counted: {baseline}"
    );

    // Alive, 100 rounds hold at least 100 * 2 * 4 KiB more.
    let alive: Vec<(Array, Array)> = (0..100).map(|_| round(&data)).collect();
    let held = active_memory();
    assert!(
        held >= baseline + 100 * 2 * 4096,
        "live arrays are not counted: baseline {baseline}, with 100 rounds alive {held}"
    );
    drop(alive);
    assert_eq!(settle_to(baseline), baseline, "dropping 100 rounds");

    for i in 0..10_000 {
        let (_, b) = round(&data);
        if i % 1000 == 0 {
            assert_eq!(b.to_vec::<f32>().unwrap()[3], 7.0);
        }
    }
    assert_eq!(settle_to(baseline), baseline, "after 10,000 rounds");

    // The resident array was not disturbed, and dropping it frees its 16 KiB.
    assert_eq!(resident.sum(mlx::ALL, false).item::<f32>().unwrap(), 4096.0);
    drop(resident);
    assert_eq!(settle_to(baseline - 4096 * 4), baseline - 4096 * 4);
}

#[mlx::graph]
fn scaled(x: &Array, k: i32) -> Array {
    // Temporaries of the trace are tracers: alive (and counted) only while it runs.
    let doubled = x * 2.0;
    (&doubled + f64::from(k)).exp()
}

/// `live_arrays` counts every live handle (clones once each, failed arrays not at all) and
/// comes back to its baseline once they are dropped: after ops, a compiled graph's traces
/// and replays, a step loop, and a handle moved to another thread and dropped there.
#[test]
fn live_arrays_return_to_baseline() {
    let _serial = serial();
    let baseline = live_arrays();
    let a = Array::ones(&[4], Dtype::F32);
    let b = a.clone();
    let c = &a * 2.0;
    assert_eq!(live_arrays(), baseline + 3, "a, its clone and c");
    let failed = Array::zeros(&[2, 3], Dtype::F32).matmul(&Array::zeros(&[4, 5], Dtype::F32));
    assert!(failed.error().is_some());
    assert_eq!(
        live_arrays(),
        baseline + 3,
        "a failed array holds no handle"
    );
    drop(failed);

    // Traces (two statics) and replays leave only their outputs.
    let outputs: Vec<Array> = (0..10).map(|i| scaled(&c, i % 2)).collect();
    mlx::eval(&outputs).unwrap();
    assert_eq!(live_arrays(), baseline + 3 + 10, "the 10 outputs");
    drop(outputs);

    let mut x = c.clone();
    for _ in mlx::steps(0..5) {
        x = (&x + &a).maximum(0.0);
    }
    assert_eq!(x.to_vec::<f32>().unwrap(), vec![7.0; 4]);
    assert_eq!(live_arrays(), baseline + 4, "the loop's result");

    std::thread::spawn(move || drop(x)).join().unwrap();
    drop((a, b, c));
    assert_eq!(live_arrays(), baseline, "everything dropped");
}

/// The peak rises by at least a big array's size while it lives, stays up after it is
/// dropped, and `reset_peak_memory` brings it back to what is active now.
#[test]
fn peak_memory_tracks_a_big_array_and_resets() {
    let _serial = serial();
    let small = evaluated(1024);
    reset_peak_memory().unwrap();
    let active = settled();
    assert!(active >= 4096);
    let peak = peak_memory();
    assert!(
        peak >= active && peak < active + MIB,
        "peak after reset {peak}, active {active}"
    );

    let big = evaluated(16 * MIB as i32); // 64 MiB
    assert!(active_memory() >= active + 64 * MIB);
    assert!(peak_memory() >= active + 64 * MIB, "peak {}", peak_memory());
    drop(big);
    assert_eq!(settle_to(active), active);
    assert!(
        peak_memory() >= active + 64 * MIB,
        "the peak forgot the dropped array"
    );

    reset_peak_memory().unwrap();
    let peak = peak_memory();
    assert!(peak < 64 * MIB, "reset left the peak at {peak}");
    assert!(
        peak >= active_memory(),
        "peak {peak} below active {}",
        active_memory()
    );
    drop(small);
}

/// Freed buffers are cached up to the cache limit, and `clear_cache` returns them all
/// without touching live arrays.
#[test]
fn clear_cache_empties_the_cache() {
    let _serial = serial();
    let previous = set_cache_limit(256 * MIB).unwrap();
    let _restore = Restore(move || {
        set_cache_limit(previous).unwrap();
    });
    let live = evaluated(1024);
    let active = settled();

    drop(evaluated(MIB as i32)); // 4 MiB freed into the cache
    mlx::synchronize().unwrap();
    let cached = cache_memory();
    assert!(
        cached >= 4 * MIB,
        "a freed 4 MiB buffer is not cached: {cached}"
    );

    clear_cache().unwrap();
    assert_eq!(cache_memory(), 0);
    assert_eq!(active_memory(), active, "clear_cache touched live arrays");
    assert_eq!(live.sum(mlx::ALL, false).item::<f32>().unwrap(), 1024.0);
}

/// `set_memory_limit` returns the limit it replaces, and putting that back restores it.
#[test]
fn memory_limit_round_trips() {
    let _serial = serial();
    let original = memory_limit();
    assert!(original > 0);
    let _restore = Restore(move || {
        set_memory_limit(original).unwrap();
    });
    assert_eq!(set_memory_limit(512 * MIB).unwrap(), original);
    assert_eq!(memory_limit(), 512 * MIB);
    assert_eq!(set_memory_limit(768 * MIB).unwrap(), 512 * MIB);
    assert_eq!(set_memory_limit(original).unwrap(), 768 * MIB);
    assert_eq!(memory_limit(), original);
}

/// `set_cache_limit` returns the cap it replaces; with a cap of 0 nothing freed is kept.
#[test]
fn cache_limit_round_trips_and_zero_disables_caching() {
    let _serial = serial();
    let original = set_cache_limit(64 * MIB).unwrap();
    let _restore = Restore(move || {
        set_cache_limit(original).unwrap();
    });
    assert_eq!(set_cache_limit(0).unwrap(), 64 * MIB);

    clear_cache().unwrap();
    drop(evaluated(MIB as i32));
    mlx::synchronize().unwrap();
    assert_eq!(cache_memory(), 0, "a cache limit of 0 still caches");

    assert_eq!(set_cache_limit(original).unwrap(), 0);
    // With the cap back, freed buffers are cached again.
    drop(evaluated(MIB as i32));
    mlx::synchronize().unwrap();
    assert!(cache_memory() >= 4 * MIB, "cache {}", cache_memory());
    clear_cache().unwrap();
}

/// The wired limit is accepted (a no-op without an Apple GPU) and round-trips.
#[test]
fn wired_limit_is_accepted() {
    let _serial = serial();
    let original = set_wired_limit(0).unwrap();
    let _restore = Restore(move || {
        set_wired_limit(original).unwrap();
    });
    set_wired_limit(MIB).unwrap();
}
