//! Every op family checked against values computed without MLX.
//!
//! Expected values are either derived by hand in the test (small cases whose answer is
//! obvious, or index arithmetic done in Rust), or read from `tests/fixtures/ops.json`,
//! which `tests/fixtures/gen_ops.py` computes with NumPy alone (see that script for how to
//! regenerate it; nothing here runs Python). Quantization and random numbers are checked
//! against error bounds and statistics derived in the comments.
//!
//! Float32 results are compared with a relative tolerance of 1e-5 plus an absolute 1e-6:
//! float32 rounds at ~6e-8 relative, and the ops here chain a handful of roundings on
//! values of magnitude up to ~10, which stays well inside; the absolute part covers
//! results that cancel to near zero, where a relative test means nothing.

use std::sync::OnceLock;

use half::{bf16, f16};
use mlx::fast::{self, Mask, Rope};
use mlx::ops::{concatenate, stack, where_, Conv2d, Fp8Rows, QuantMode, Quantized, ALL};
use mlx::{random, Array, Dtype, Element};
use serde_json::Value;

// === helpers ==================================================================================

/// `|actual - expected| <= atol + rtol * |expected|`, element-wise.
#[derive(Clone, Copy, Debug)]
struct Tol {
    rtol: f64,
    atol: f64,
}

/// The float32 tolerance of the whole file (see the module comment).
const F32: Tol = Tol {
    rtol: 1e-5,
    atol: 1e-6,
};

/// For sums of many products that may cancel (conv2d: 18 products of standard-normal
/// inputs per output, |products| summing to ~15): float32 accumulation in any order errs
/// by up to ~18 * 2^-24 of that sum, about 1e-5 absolute, whatever the size of the result.
const ACCUM: Tol = Tol {
    rtol: 1e-5,
    atol: 1e-5,
};

#[track_caller]
fn read<T: Element>(a: &Array) -> Vec<T> {
    a.to_vec::<T>()
        .unwrap_or_else(|e| panic!("reading the array failed: {e}"))
}

#[track_caller]
fn f32s(a: &Array) -> Vec<f32> {
    read::<f32>(a)
}

#[track_caller]
fn assert_close(actual: &[f32], expected: &[f64], tol: Tol) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "length: got {actual:?}, expected {expected:?}"
    );
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let err = (f64::from(a) - e).abs();
        assert!(
            err <= tol.atol + tol.rtol * e.abs(),
            "element {i}: got {a}, expected {e} (error {err:e}, {tol:?})\n\
             got      {actual:?}\nexpected {expected:?}"
        );
    }
}

/// Checks a float32 array's dtype, shape and values.
#[track_caller]
fn assert_array(actual: &Array, shape: &[i32], expected: &[f64], tol: Tol) {
    assert_eq!(actual.dtype(), Dtype::F32, "dtype");
    assert_eq!(actual.shape(), shape, "shape");
    assert_close(&f32s(actual), expected, tol);
}

/// Checks an array's dtype, shape and exact values.
#[track_caller]
fn assert_exact<T: Element + PartialEq + std::fmt::Debug>(
    actual: &Array,
    shape: &[i32],
    expected: &[T],
) {
    assert_eq!(actual.dtype(), T::DTYPE, "dtype");
    assert_eq!(actual.shape(), shape, "shape");
    assert_eq!(read::<T>(actual), expected);
}

fn f32_array(data: &[f32], shape: &[i32]) -> Array {
    Array::from_slice(data, shape)
}

fn i32_array(data: &[i32], shape: &[i32]) -> Array {
    Array::from_slice(data, shape)
}

/// `0, 1, ..., n - 1` as int32 in `shape`, built without MLX's arange.
fn iota(shape: &[i32]) -> Array {
    let n: i32 = shape.iter().product();
    i32_array(&(0..n).collect::<Vec<_>>(), shape)
}

/// Deterministic standard-normal samples (SplitMix64 and Box-Muller), independent of MLX.
fn gauss(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // Uniform in (0, 1].
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (next(), next());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect()
}

// --- fixtures -----------------------------------------------------------------------------------

fn fixtures() -> &'static Value {
    static FIXTURES: OnceLock<Value> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/ops.json")).expect("ops.json is valid JSON")
    })
}

/// The fixture value at a dotted path (`"sdpa.q"`).
#[track_caller]
fn fx(path: &str) -> &'static Value {
    let value = path.split('.').fold(fixtures(), |v, key| &v[key]);
    assert!(!value.is_null(), "ops.json has no `{path}`");
    value
}

#[track_caller]
fn fx_num(path: &str) -> f64 {
    fx(path).as_f64().expect("a number")
}

/// A fixture tensor: its shape and row-major data.
#[track_caller]
fn fx_tensor(path: &str) -> (Vec<i32>, Vec<f64>) {
    let t = fx(path);
    let shape = t["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_i64().expect("an integer dimension") as i32)
        .collect();
    let data = t["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect();
    (shape, data)
}

/// A fixture input as a float32 array (the same float32 values NumPy used).
#[track_caller]
fn fx_input(path: &str) -> Array {
    let (shape, data) = fx_tensor(path);
    let data: Vec<f32> = data.iter().map(|&x| x as f32).collect();
    f32_array(&data, &shape)
}

/// Checks a float32 array against a fixture tensor.
#[track_caller]
fn assert_fixture(actual: &Array, path: &str, tol: Tol) {
    let (shape, expected) = fx_tensor(path);
    assert_array(actual, &shape, &expected, tol);
}

// === creation =================================================================================

#[track_caller]
fn roundtrip<T: Element + PartialEq + std::fmt::Debug>(data: &[T]) {
    let a = Array::from_slice(data, &[data.len() as i32]);
    assert_eq!(a.dtype(), T::DTYPE);
    assert_eq!(a.nbytes(), data.len() * T::DTYPE.size());
    assert_eq!(read::<T>(&a), data);
}

#[test]
fn from_slice_keeps_shape_dtype_and_data() {
    let a = f32_array(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.ndim(), 2);
    assert_eq!(a.size(), 6);
    assert_eq!(a.dim(0), Some(2));
    assert_eq!(a.dim(-1), Some(3));
    assert_eq!(a.dim(2), None);
    assert_eq!(a.nbytes(), 24);
    assert_exact(&a, &[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);

    roundtrip(&[true, false, true]);
    roundtrip(&[0u8, 7, 255]);
    roundtrip(&[0u16, 300, u16::MAX]);
    roundtrip(&[0u32, 70_000, u32::MAX]);
    roundtrip(&[0u64, 1 << 40, u64::MAX]);
    roundtrip(&[i8::MIN, -1, i8::MAX]);
    roundtrip(&[i16::MIN, -300, i16::MAX]);
    roundtrip(&[i32::MIN, -70_000, i32::MAX]);
    roundtrip(&[i64::MIN, -(1 << 40), i64::MAX]);
    roundtrip(&[f16::from_f32(-1.5), f16::MAX, f16::MIN_POSITIVE_SUBNORMAL]);
    roundtrip(&[bf16::from_f32(-1.5), bf16::MAX, bf16::from_f32(1e-30)]);
    roundtrip(&[-1.5f32, f32::MAX, 1e-40]);
    roundtrip(&[-1.5f64, f64::MAX, 1e-300]);
}

#[test]
fn scalars_and_item() {
    let s = Array::scalar(2.5f32);
    assert_eq!(s.shape(), &[] as &[i32]);
    assert_eq!(s.size(), 1);
    assert_eq!(s.item::<f32>().unwrap(), 2.5);
    assert_eq!(Array::scalar(-7i64).item::<i64>().unwrap(), -7);
    assert!(Array::scalar(true).item::<bool>().unwrap());
    // `item` takes any one-element shape.
    assert_eq!(f32_array(&[4.0], &[1, 1, 1]).item::<f32>().unwrap(), 4.0);
}

#[test]
fn zeros_ones_full() {
    assert_exact(&Array::zeros(&[2, 3], Dtype::I32), &[2, 3], &[0i32; 6]);
    assert_exact(&Array::zeros(&[4], Dtype::F32), &[4], &[0.0f32; 4]);
    assert_exact(&Array::ones(&[3], Dtype::F16), &[3], &[f16::ONE; 3]);
    assert_exact(&Array::ones(&[2, 2], Dtype::U8), &[2, 2], &[1u8; 4]);
    assert_exact(
        &Array::full(&[2], 2.5, Dtype::Bf16),
        &[2],
        &[bf16::from_f32(2.5); 2],
    );
    assert_exact(&Array::full(&[3, 1], 7, Dtype::I64), &[3, 1], &[7i64; 3]);
    assert_exact(&Array::full(&[2], true, Dtype::Bool), &[2], &[true; 2]);
    // A float value converts to an integer dtype as Rust's `as` does: 2.7 -> 2.
    assert_exact(&Array::full(&[2], 2.7, Dtype::I32), &[2], &[2i32; 2]);
    assert_exact(&Array::full(&[], -0.5, Dtype::F64), &[], &[-0.5f64]);
}

#[test]
fn arange_and_linspace() {
    assert_exact(
        &Array::arange(0.0, 5.0, 1.0, Dtype::I32),
        &[5],
        &[0i32, 1, 2, 3, 4],
    );
    assert_exact(
        &Array::arange(5.0, 0.0, -2.0, Dtype::I32),
        &[3],
        &[5i32, 3, 1],
    );
    assert_exact(
        &Array::arange(0.0, 2.0, 0.5, Dtype::F32),
        &[4],
        &[0.0f32, 0.5, 1.0, 1.5],
    );
    // ceil((1 - 0) / 0.1) = 10 values, the last one 0.9.
    let a = Array::arange(0.0, 1.0, 0.1, Dtype::F32);
    let expected: Vec<f64> = (0..10).map(|i| f64::from(i) * 0.1).collect();
    assert_array(&a, &[10], &expected, F32);

    assert_exact(
        &Array::linspace(0.0, 1.0, 5, Dtype::F32),
        &[5],
        &[0.0f32, 0.25, 0.5, 0.75, 1.0],
    );
    // MLX steps in float32, which may land an ulp off values like -1 = -3 + 6 / 3.
    assert_array(
        &Array::linspace(-3.0, 3.0, 4, Dtype::F32),
        &[4],
        &[-3.0, -1.0, 1.0, 3.0],
        F32,
    );
    let a = Array::linspace(0.0, 1.0, 7, Dtype::F32);
    let expected: Vec<f64> = (0..7).map(|i| f64::from(i) / 6.0).collect();
    assert_array(&a, &[7], &expected, F32);
}

#[test]
fn astype_between_dtypes() {
    let x = f32_array(&[-2.5, -1.0, 0.0, 0.75, 3.9], &[5]);
    // Float to integer truncates toward zero.
    assert_exact(&x.astype(Dtype::I32), &[5], &[-2i32, -1, 0, 0, 3]);
    assert_exact(&x.astype(Dtype::I8), &[5], &[-2i8, -1, 0, 0, 3]);
    assert_exact(&x.astype(Dtype::I64), &[5], &[-2i64, -1, 0, 0, 3]);
    assert_exact(
        &f32_array(&[0.0, 0.75, 3.9, 255.0], &[4]).astype(Dtype::U8),
        &[4],
        &[0u8, 0, 3, 255],
    );
    assert_exact(
        &x.astype(Dtype::Bool),
        &[5],
        &[true, true, false, true, true],
    );
    assert_exact(
        &x.astype(Dtype::F64),
        &[5],
        &[-2.5f64, -1.0, 0.0, 0.75, 3.9f32 as f64],
    );

    // Integers and bools to floats. 2^24 + 1 is halfway between the float32 neighbours
    // 2^24 and 2^24 + 2, and rounds to the even one, 2^24.
    assert_exact(
        &i32_array(&[-3, 0, 16_777_217], &[3]).astype(Dtype::F32),
        &[3],
        &[-3.0f32, 0.0, 16_777_216.0],
    );
    assert_exact(
        &Array::from_slice(&[true, false], &[2]).astype(Dtype::I32),
        &[2],
        &[1i32, 0],
    );
    assert_exact(
        &Array::from_slice(&[200u8, 3], &[2]).astype(Dtype::I32),
        &[2],
        &[200i32, 3],
    );

    // float32 -> float16 rounds to nearest: 1/3, a subnormal (1e-7 is 1.68 steps of
    // 2^-24), the largest finite value, and an overflow to infinity.
    let values = [1.0f32 / 3.0, 1e-7, 65504.0, 1e5, -0.1, 2.0];
    let h = f32_array(&values, &[6]).astype(Dtype::F16);
    let expected: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
    assert_exact(&h, &[6], &expected);
    assert_eq!(expected[1].to_f32(), 2.0 * 2f32.powi(-24));
    assert!(expected[3].is_infinite());
    // float16 -> float32 is exact.
    let back: Vec<f32> = expected.iter().map(|v| v.to_f32()).collect();
    assert_exact(&h.astype(Dtype::F32), &[6], &back);

    // float32 -> bfloat16 (8 significant bits) rounds half to even: 1 + 2^-8 is halfway
    // between 1 and 1 + 2^-7 and goes to 1; 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and
    // 1 + 2^-6 and goes to 1 + 2^-6; 1 + 2^-8 + 2^-10 is past halfway and goes up.
    let values = [
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        1.0 + 2f32.powi(-8) + 2f32.powi(-10),
        -2.71,
        1e-30,
    ];
    let b = f32_array(&values, &[5]).astype(Dtype::Bf16);
    let got: Vec<f32> = read::<bf16>(&b).iter().map(|v| v.to_f32()).collect();
    assert_eq!(got[..3], [1.0, 1.0 + 2f32.powi(-6), 1.0 + 2f32.powi(-7)]);
    let expected: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_exact(&b, &[5], &expected);
    // bfloat16 -> float16 -> float32 keeps these values (all fit float16 except 1e-30,
    // which flushes to zero).
    let via_f16 = f32s(&b.astype(Dtype::F16).astype(Dtype::F32));
    assert_eq!(via_f16[..4], got[..4]);
    assert_eq!(via_f16[4], 0.0);
}

// === arithmetic ===============================================================================

#[test]
fn binary_arithmetic_broadcasts() {
    let x = f32_array(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let y = f32_array(&[10.0, 20.0, 40.0], &[3]);
    let s = [2, 3];
    assert_exact(&(&x + &y), &s, &[11.0f32, 22.0, 43.0, 14.0, 25.0, 46.0]);
    assert_exact(&(&x - &y), &s, &[-9.0f32, -18.0, -37.0, -6.0, -15.0, -34.0]);
    assert_exact(&(&x * &y), &s, &[10.0f32, 40.0, 120.0, 40.0, 100.0, 240.0]);
    let quotient: Vec<f64> = [1.0 / 10.0, 2.0 / 20.0, 3.0 / 40.0, 0.4, 0.25, 6.0 / 40.0].to_vec();
    assert_array(&(&x / &y), &s, &quotient, F32);
    assert_exact(&(-&x), &s, &[-1.0f32, -2.0, -3.0, -4.0, -5.0, -6.0]);
    // Owned operands work the same.
    assert_exact(
        &(x.clone() + y.clone()),
        &s,
        &[11.0f32, 22.0, 43.0, 14.0, 25.0, 46.0],
    );
    assert_exact(&(-x.clone()), &s, &[-1.0f32, -2.0, -3.0, -4.0, -5.0, -6.0]);

    // [2, 1] with [1, 3] broadcasts both ways to [2, 3].
    let col = f32_array(&[1.0, 2.0], &[2, 1]);
    let row = f32_array(&[10.0, 20.0, 30.0], &[1, 3]);
    assert_exact(
        &(&col + &row),
        &[2, 3],
        &[11.0f32, 21.0, 31.0, 12.0, 22.0, 32.0],
    );
    assert_exact(
        &(&row * &col),
        &[2, 3],
        &[10.0f32, 20.0, 30.0, 20.0, 40.0, 60.0],
    );
}

#[test]
fn scalar_operands_on_both_sides() {
    let x = f32_array(&[1.0, 2.0, 4.0], &[3]);
    assert_exact(&(&x + 1.0), &[3], &[2.0f32, 3.0, 5.0]);
    assert_exact(&(&x - 0.5), &[3], &[0.5f32, 1.5, 3.5]);
    assert_exact(&(&x * 2), &[3], &[2.0f32, 4.0, 8.0]);
    assert_exact(&(&x / 4.0f32), &[3], &[0.25f32, 0.5, 1.0]);
    assert_exact(&(x.clone() * 3i64), &[3], &[3.0f32, 6.0, 12.0]);
    // Scalar on the left: the order of the operands is kept.
    assert_exact(&(2.0 - &x), &[3], &[1.0f32, 0.0, -2.0]);
    assert_exact(&(1.0 / &x), &[3], &[1.0f32, 0.5, 0.25]);
    assert_exact(&(8i32 / &x), &[3], &[8.0f32, 4.0, 2.0]);
    assert_exact(&(3 * &x), &[3], &[3.0f32, 6.0, 12.0]);
    assert_exact(&(10.0f32 + x.clone()), &[3], &[11.0f32, 12.0, 14.0]);
    assert_exact(&(1i64 - x.clone()), &[3], &[0.0f32, -1.0, -3.0]);
}

#[test]
fn scalar_operands_are_weakly_typed() {
    // A float scalar keeps a half-precision array's dtype.
    let b = Array::from_slice(
        &[
            bf16::from_f32(1.5),
            bf16::from_f32(-2.0),
            bf16::from_f32(3.0),
        ],
        &[3],
    );
    let expected = [0.75, -1.0, 1.5].map(bf16::from_f32);
    assert_exact(&(&b * 0.5), &[3], &expected);
    let expected = [0.5, 4.0, -1.0].map(bf16::from_f32);
    assert_exact(&(2.0 - &b), &[3], &expected);

    let h = Array::from_slice(&[f16::from_f32(1.0), f16::from_f32(-0.25)], &[2]);
    assert_exact(&(&h + 1.0), &[2], &[2.0, 0.75].map(f16::from_f32));
    assert_exact(&(3.0 * &h), &[2], &[3.0, -0.75].map(f16::from_f32));

    // An integer array with a float scalar becomes float32; with an integer scalar it
    // keeps its dtype.
    let i = i32_array(&[1, 2, 3], &[3]);
    assert_exact(&(&i + 1.5), &[3], &[2.5f32, 3.5, 4.5]);
    assert_exact(&(1.5 * &i), &[3], &[1.5f32, 3.0, 4.5]);
    assert_exact(&(&i * 2), &[3], &[2i32, 4, 6]);
    assert_exact(&(10 - &i), &[3], &[9i32, 8, 7]);
    let u = Array::from_slice(&[1u8, 250], &[2]);
    assert_exact(&(&u + 2), &[2], &[3u8, 252]);
    // Integer division is true division, as in MLX and NumPy.
    assert_exact(&(&i / 2), &[3], &[0.5f32, 1.0, 1.5]);
}

// === matmul and addmm =========================================================================

#[test]
fn matmul_by_hand() {
    let a = f32_array(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = f32_array(&[5.0, 6.0, 7.0, 8.0], &[2, 2]);
    assert_exact(&a.matmul(&b), &[2, 2], &[19.0f32, 22.0, 43.0, 50.0]);
    assert_exact(&b.matmul(&a), &[2, 2], &[23.0f32, 34.0, 31.0, 46.0]);
    // [1, 3] @ [3, 1] and [3, 1] @ [1, 3].
    let r = f32_array(&[1.0, 2.0, 3.0], &[1, 3]);
    let c = f32_array(&[4.0, 5.0, 6.0], &[3, 1]);
    assert_exact(&r.matmul(&c), &[1, 1], &[32.0f32]);
    assert_exact(
        &c.matmul(&r),
        &[3, 3],
        &[4.0f32, 8.0, 12.0, 5.0, 10.0, 15.0, 6.0, 12.0, 18.0],
    );
}

#[test]
fn matmul_and_addmm_match_numpy() {
    let a = fx_input("matmul.a");
    let b = fx_input("matmul.b");
    // Batched [2, 3, 4] @ [4, 5], the second operand broadcast over the batch.
    assert_fixture(&a.matmul(&b), "matmul.a_at_b", F32);

    let c = fx_input("matmul.c");
    let a2 = fx_input("matmul.a2");
    let alpha = fx_num("matmul.alpha") as f32;
    let beta = fx_num("matmul.beta") as f32;
    assert_fixture(&c.addmm(&a2, &b, alpha, beta), "matmul.addmm", F32);
}

// === reductions, scans, sorting ===============================================================

#[test]
fn reductions_by_hand() {
    // [[0, 1, 2], [3, 4, 5]]
    let x = iota(&[2, 3]).astype(Dtype::F32);
    assert_exact(&x.sum(ALL, false), &[], &[15.0f32]);
    assert_exact(&x.sum(ALL, true), &[1, 1], &[15.0f32]);
    assert_exact(&x.sum(0, false), &[3], &[3.0f32, 5.0, 7.0]);
    assert_exact(&x.sum(1, true), &[2, 1], &[3.0f32, 12.0]);
    assert_exact(&x.sum(&[0, 1], false), &[], &[15.0f32]);
    assert_exact(&x.mean(-1, false), &[2], &[1.0f32, 4.0]);
    assert_exact(&x.mean(ALL, false), &[], &[2.5f32]);
    assert_exact(&x.max(0, false), &[3], &[3.0f32, 4.0, 5.0]);
    assert_exact(&x.min(1, true), &[2, 1], &[0.0f32, 3.0]);
    // Variance of (0, 1, 2): squares of deviations sum to 2; / 3, or / 2 with ddof 1.
    assert_array(&x.var(1, false, 0), &[2], &[2.0 / 3.0; 2], F32);
    assert_exact(&x.var(1, false, 1), &[2], &[1.0f32, 1.0]);
    assert_exact(&x.argmax(1, false), &[2], &[2u32, 2]);
    assert_exact(&x.argmax(ALL, false), &[], &[5u32]);
    assert_exact(
        &x.cumsum(1, false, true),
        &[2, 3],
        &[0.0f32, 1.0, 3.0, 3.0, 7.0, 12.0],
    );
    // Integer sums stay integer.
    assert_exact(&iota(&[4]).sum(ALL, false), &[], &[6i32]);
}

#[test]
fn finiteness() {
    let x = f32_array(&[1.0, f32::NAN, f32::INFINITY, -f32::INFINITY, -0.0], &[5]);
    assert_exact(&x.isfinite(), &[5], &[true, false, false, false, true]);
    assert!(!x.all_finite().unwrap());
    assert!(x.slice_axis(0, 4, 5).all_finite().unwrap());
    // A NaN in bfloat16 too, and integers are always finite, as an empty array is.
    assert!(!x.astype(Dtype::Bf16).all_finite().unwrap());
    assert!(iota(&[3]).all_finite().unwrap());
    assert!(Array::zeros(&[0, 4], Dtype::F32).all_finite().unwrap());
}

#[test]
fn reductions_match_numpy() {
    let x = fx_input("reduce.x"); // [2, 3, 4], distinct values
    assert_fixture(&x.sum(&[0, 2], false), "reduce.sum_axes_0_2", F32);
    assert_fixture(&x.sum(ALL, false), "reduce.sum_all", F32);
    assert_fixture(&x.mean(1, true), "reduce.mean_axis1_keepdims", F32);
    // The fixture holds 7 significant digits, so even exact results compare with F32.
    assert_fixture(&x.max(-1, false), "reduce.max_last", F32);
    assert_fixture(&x.min(0, false), "reduce.min_axis0", F32);
    assert_fixture(&x.var(-1, false, 0), "reduce.var_last", F32);
    assert_fixture(&x.var(ALL, false, 1), "reduce.var_all_ddof1", F32);
    assert_fixture(
        &x.var(&[0, 1], true, 1),
        "reduce.var_axes_0_1_ddof1_keepdims",
        F32,
    );
    assert_fixture(&x.cumsum(1, false, true), "reduce.cumsum_axis1", F32);
    assert_fixture(
        &x.cumsum(1, false, false),
        "reduce.cumsum_axis1_exclusive",
        F32,
    );
    assert_fixture(&x.cumsum(1, true, true), "reduce.cumsum_axis1_reverse", F32);

    let (shape, argmax) = fx_tensor("reduce.argmax_axis1");
    let argmax: Vec<u32> = argmax.iter().map(|&i| i as u32).collect();
    assert_exact(&x.argmax(1, false), &shape, &argmax);
    let mut keep_shape = shape.clone();
    keep_shape.insert(1, 1);
    assert_exact(&x.argmax(1, true), &keep_shape, &argmax);
    assert_eq!(
        x.argmax(ALL, false).item::<u32>().unwrap(),
        fx_num("reduce.argmax_all") as u32
    );

    let (shape, argsort) = fx_tensor("reduce.argsort_last");
    let argsort: Vec<u32> = argsort.iter().map(|&i| i as u32).collect();
    assert_exact(&x.argsort(-1), &shape, &argsort);

    // topk returns the k largest in no set order: sort each row before comparing.
    let top = x.topk(2, -1);
    let (shape, expected) = fx_tensor("reduce.top2_last_sorted");
    assert_eq!(top.shape(), shape.as_slice());
    let mut got = f32s(&top);
    for pair in got.chunks_mut(2) {
        pair.sort_by(f32::total_cmp);
    }
    assert_close(&got, &expected, F32);
    // The same through sort, checked against the fixture too.
    let sorted = x.sort(-1).slice_axis(-1, 2, 4);
    assert_fixture(&sorted, "reduce.top2_last_sorted", F32);
}

#[test]
fn softmax_matches_numpy() {
    let x = fx_input("softmax.x");
    assert_fixture(&x.softmax(-1), "softmax.axis_last", F32);
    assert_fixture(&x.softmax(0), "softmax.axis0", F32);
    // Rows of a softmax sum to one.
    assert_array(&x.softmax(-1).sum(-1, false), &[2], &[1.0, 1.0], F32);
    // Over ALL axes: exp(x - max) / sum, computed here in f64.
    let (shape, data) = fx_tensor("softmax.x");
    let data: Vec<f64> = data.iter().map(|&v| f64::from(v as f32)).collect();
    let max = data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = data.iter().map(|v| (v - max).exp()).sum();
    let expected: Vec<f64> = data.iter().map(|v| (v - max).exp() / total).collect();
    assert_array(&x.softmax(ALL), &shape, &expected, F32);
}

// === element-wise math ========================================================================

#[test]
fn unary_math_matches_numpy() {
    type Op = fn(&Array) -> Array;
    // (name in the fixture, op, takes the positive input)
    let cases: [(&str, Op, bool); 14] = [
        ("exp", |a| a.exp(), false),
        ("log", |a| a.log(), true),
        ("sqrt", |a| a.sqrt(), true),
        ("rsqrt", |a| a.rsqrt(), true),
        ("square", |a| a.square(), false),
        ("abs", |a| a.abs(), false),
        ("sin", |a| a.sin(), false),
        ("cos", |a| a.cos(), false),
        ("tanh", |a| a.tanh(), false),
        ("sigmoid", |a| a.sigmoid(), false),
        ("erf", |a| a.erf(), false),
        ("silu", |a| a.silu(), false),
        ("gelu", |a| a.gelu(), false),
        ("gelu_approx", |a| a.gelu_approx(), false),
    ];
    let x = fx_input("unary.x");
    let x_pos = fx_input("unary.x_pos");
    // All at the file's F32 tolerance. MLX's CPU erf is Abramowitz & Stegun 7.1.26, whose
    // absolute error is below 1.5e-7: with float32 rounding that stays inside the atol of
    // 1e-6, so erf and gelu need nothing looser. exp, sin and cos are Cephes polynomials
    // accurate to a few float32 ulps, also inside.
    for (name, op, positive) in cases {
        let input = if positive { &x_pos } else { &x };
        let result = op(input);
        let (shape, expected) = fx_tensor(&format!("unary.{name}"));
        assert_eq!(result.dtype(), Dtype::F32, "{name}");
        assert_eq!(result.shape(), shape.as_slice(), "{name}");
        let got = f32s(&result);
        for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
            let err = (f64::from(g) - e).abs();
            assert!(
                err <= F32.atol + F32.rtol * e.abs(),
                "{name} element {i}: got {g}, expected {e} (error {err:e})"
            );
        }
    }
}

// === comparisons and selection ================================================================

#[test]
fn comparisons() {
    let a = f32_array(&[1.0, 2.0, 3.0, 4.0], &[4]);
    let b = f32_array(&[4.0, 2.0, 2.0, 4.0], &[4]);
    assert_exact(&a.equal(&b), &[4], &[false, true, false, true]);
    assert_exact(&a.less(&b), &[4], &[true, false, false, false]);
    assert_exact(&a.greater(&b), &[4], &[false, false, true, false]);
    assert_exact(&a.greater(2.5), &[4], &[false, false, true, true]);
    assert_exact(&a.less(3), &[4], &[true, true, false, false]);
    assert_exact(&a.equal(4.0), &[4], &[false, false, false, true]);
    // [2, 1] against [4] broadcasts to [2, 4].
    let t = f32_array(&[1.5, 3.5], &[2, 1]);
    assert_exact(
        &a.greater(&t),
        &[2, 4],
        &[false, true, true, true, false, false, false, true],
    );
}

#[test]
fn maximum_minimum_clip() {
    let a = f32_array(&[-1.0, 2.0, -3.0, 4.0], &[4]);
    let b = f32_array(&[0.0, 3.0, -4.0, 1.0], &[4]);
    assert_exact(&a.maximum(&b), &[4], &[0.0f32, 3.0, -3.0, 4.0]);
    assert_exact(&a.minimum(&b), &[4], &[-1.0f32, 2.0, -4.0, 1.0]);
    assert_exact(&a.maximum(0.0), &[4], &[0.0f32, 2.0, 0.0, 4.0]);
    assert_exact(&a.minimum(0), &[4], &[-1.0f32, 0.0, -3.0, 0.0]);
    assert_exact(&a.clip(-2.0, 3.0), &[4], &[-1.0f32, 2.0, -2.0, 3.0]);
    let lo = f32_array(&[0.0, 2.5, -5.0, 0.0], &[4]);
    let hi = f32_array(&[1.0, 5.0, -4.0, 3.5], &[4]);
    assert_exact(&a.clip(&lo, &hi), &[4], &[0.0f32, 2.5, -4.0, 3.5]);
}

#[test]
fn where_selects() {
    let cond = Array::from_slice(&[true, false, false, true], &[4]);
    let a = f32_array(&[1.0, 2.0, 3.0, 4.0], &[4]);
    let b = f32_array(&[-1.0, -2.0, -3.0, -4.0], &[4]);
    assert_exact(&where_(&cond, &a, &b), &[4], &[1.0f32, -2.0, -3.0, 4.0]);
    assert_exact(&where_(&cond, &a, 0.0), &[4], &[1.0f32, 0.0, 0.0, 4.0]);
    assert_exact(&where_(&cond, 1.0, 0.0), &[4], &[1.0f32, 0.0, 0.0, 1.0]);
    // The condition broadcasts against [2, 4] operands.
    let a2 = iota(&[2, 4]);
    assert_exact(
        &where_(&cond, &a2, -1),
        &[2, 4],
        &[0i32, -1, -1, 3, 4, -1, -1, 7],
    );
    // A computed condition.
    let relu = where_(&a.greater(2.5), &a, 0.0);
    assert_exact(&relu, &[4], &[0.0f32, 0.0, 3.0, 4.0]);
}

// === shapes, joining, slicing, gathering ======================================================

/// NumPy's `transpose(axes)` of a row-major `shape` array holding 0, 1, 2, ...
fn transposed_iota(shape: &[i32], axes: &[usize]) -> (Vec<i32>, Vec<i32>) {
    let strides: Vec<i32> = (0..shape.len())
        .map(|i| shape[i + 1..].iter().product())
        .collect();
    let out_shape: Vec<i32> = axes.iter().map(|&a| shape[a]).collect();
    let n: i32 = shape.iter().product();
    let data = (0..n)
        .map(|flat| {
            // Unravel `flat` in the output shape, then map each output axis to its input one.
            let mut rem = flat;
            let mut offset = 0;
            for (k, &axis) in axes.iter().enumerate().rev() {
                let idx = rem % out_shape[k];
                rem /= out_shape[k];
                offset += idx * strides[axis];
            }
            offset
        })
        .collect();
    (out_shape, data)
}

#[test]
fn reshape_transpose_and_axes() {
    let x = iota(&[2, 3, 4]);
    let flat: Vec<i32> = (0..24).collect();
    assert_exact(&x.reshape(&[4, -1]), &[4, 6], &flat);
    assert_exact(&x.reshape(&[24]), &[24], &flat);

    let (shape, data) = transposed_iota(&[2, 3, 4], &[2, 0, 1]);
    assert_eq!(data[..3], [0, 4, 8]); // out[0, 0, :] = x[0, :, 0]
    assert_exact(&x.transpose(&[2, 0, 1]), &shape, &data);
    let (shape, data) = transposed_iota(&[2, 3, 4], &[1, 0, 2]);
    assert_exact(&x.transpose(&[1, 0, 2]), &shape, &data);
    let (shape, data) = transposed_iota(&[2, 3, 4], &[2, 1, 0]);
    assert_exact(&x.t(), &shape, &data);
    assert_exact(&iota(&[2, 3]).t(), &[3, 2], &[0i32, 3, 1, 4, 2, 5]);
    assert_exact(&x.swapaxes(0, 2), &shape, &data);

    assert_exact(&x.expand_dims(0), &[1, 2, 3, 4], &flat);
    assert_exact(&x.expand_dims(-1), &[2, 3, 4, 1], &flat);
    assert_exact(&x.expand_dims(&[1, 4]), &[2, 1, 3, 4, 1], &flat);

    let y = iota(&[1, 3, 1, 2]);
    let six: Vec<i32> = (0..6).collect();
    assert_exact(&y.squeeze(ALL), &[3, 2], &six);
    assert_exact(&y.squeeze(2), &[1, 3, 2], &six);
    assert_exact(&y.squeeze(&[0, 2]), &[3, 2], &six);

    assert_exact(&x.flatten(0, -1), &[24], &flat);
    assert_exact(&x.flatten(1, 2), &[2, 12], &flat);
    assert_exact(&x.flatten(0, 1), &[6, 4], &flat);
}

#[test]
fn concatenate_stack_split() {
    let a = i32_array(&[1, 2, 3, 4], &[2, 2]);
    let b = i32_array(&[5, 6], &[2, 1]);
    assert_exact(&concatenate(&[&a, &b], 1), &[2, 3], &[1, 2, 5, 3, 4, 6]);
    let c = i32_array(&[7, 8], &[1, 2]);
    assert_exact(&concatenate(&[&a, &c], 0), &[3, 2], &[1, 2, 3, 4, 7, 8]);
    assert_exact(
        &concatenate(&[&c, &a, &c], -2),
        &[4, 2],
        &[7, 8, 1, 2, 3, 4, 7, 8],
    );

    let p = i32_array(&[1, 2, 3], &[3]);
    let q = i32_array(&[4, 5, 6], &[3]);
    assert_exact(&stack(&[&p, &q], 0), &[2, 3], &[1, 2, 3, 4, 5, 6]);
    assert_exact(&stack(&[&p, &q], 1), &[3, 2], &[1, 4, 2, 5, 3, 6]);
    assert_exact(&stack(&[&p, &q], -1), &[3, 2], &[1, 4, 2, 5, 3, 6]);

    // [[0..6], [6..12]] in three [2, 2] parts along axis 1.
    let x = iota(&[2, 6]);
    let parts = x.split(3, 1);
    assert_eq!(parts.len(), 3);
    assert_exact(&parts[0], &[2, 2], &[0, 1, 6, 7]);
    assert_exact(&parts[1], &[2, 2], &[2, 3, 8, 9]);
    assert_exact(&parts[2], &[2, 2], &[4, 5, 10, 11]);
    let halves = x.split(2, 0);
    assert_eq!(halves.len(), 2);
    assert_exact(&halves[1], &[1, 6], &[6, 7, 8, 9, 10, 11]);

    // Cuts before rows 1 and 3 of a [5, 2] array: rows 0, 1..3, 3..5.
    let y = iota(&[5, 2]);
    let parts = y.split_at(&[1, 3], 0);
    assert_eq!(parts.len(), 3);
    assert_exact(&parts[0], &[1, 2], &[0, 1]);
    assert_exact(&parts[1], &[2, 2], &[2, 3, 4, 5]);
    assert_exact(&parts[2], &[2, 2], &[6, 7, 8, 9]);
    let cols = y.split_at(&[1], 1);
    assert_exact(&cols[0], &[5, 1], &[0, 2, 4, 6, 8]);
    assert_exact(&cols[1], &[5, 1], &[1, 3, 5, 7, 9]);
}

#[test]
fn slicing() {
    let v = iota(&[10]);
    assert_exact(&v.slice(&[2], &[7], &[]), &[5], &[2, 3, 4, 5, 6]);
    // Negative bounds count from the end: 2..9 by 3.
    assert_exact(&v.slice(&[-8], &[-1], &[3]), &[3], &[2, 5, 8]);
    // Out-of-range bounds are clamped.
    assert_exact(&v.slice(&[-100], &[100], &[4]), &[3], &[0, 4, 8]);
    assert_exact(&v.slice(&[7], &[3], &[]), &[0], &[] as &[i32]);
    // Negative strides walk backwards, as in NumPy: v[8:1:-3], v[-1:-11:-4], v[::-1].
    assert_exact(&v.slice(&[8], &[1], &[-3]), &[3], &[8, 5, 2]);
    assert_exact(&v.slice(&[-1], &[-11], &[-4]), &[3], &[9, 5, 1]);
    let reversed: Vec<i32> = (0..10).rev().collect();
    assert_exact(&v.slice(&[9], &[-100], &[-1]), &[10], &reversed);

    // x[i, j, k] = 12 i + 4 j + k
    let x = iota(&[2, 3, 4]);
    // x[:, 1:3, ::2]
    assert_exact(
        &x.slice(&[0, 1, 0], &[2, 3, 4], &[1, 1, 2]),
        &[2, 2, 2],
        &[4, 6, 8, 10, 16, 18, 20, 22],
    );
    // x[-1:, -2:, -3:]
    assert_exact(
        &x.slice(&[-1, -2, -3], &[2, 3, 4], &[]),
        &[1, 2, 3],
        &[17, 18, 19, 21, 22, 23],
    );
    // x[::-1, 0, 3:0:-2]
    assert_exact(
        &x.slice(&[-1, 0, 3], &[-3, 1, 0], &[-1, 1, -2]),
        &[2, 1, 2],
        &[15, 13, 3, 1],
    );
    // x[:, 1:3, :]
    assert_exact(
        &x.slice_axis(1, 1, 3),
        &[2, 2, 4],
        &[4, 5, 6, 7, 8, 9, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23],
    );
    assert_exact(&x.slice_axis(-1, 3, 4), &[2, 3, 1], &[3, 7, 11, 15, 19, 23]);
}

#[test]
fn slice_update() {
    let z = Array::zeros(&[3, 4], Dtype::I32);
    let ones = Array::ones(&[2, 2], Dtype::I32);
    assert_exact(
        &z.slice_update(&ones, &[1, 1], &[3, 3], &[]),
        &[3, 4],
        &[0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0],
    );
    // Strided: every other column of rows 0 and 2.
    let upd = i32_array(&[1, 2, 3, 4], &[2, 2]);
    assert_exact(
        &z.slice_update(&upd, &[0, 0], &[3, 4], &[2, 2]),
        &[3, 4],
        &[1, 0, 2, 0, 0, 0, 0, 0, 3, 0, 4, 0],
    );
    // A scalar update broadcasts over the slice; negative bounds count from the end.
    let nine = Array::scalar(9i32);
    assert_exact(
        &iota(&[3, 4]).slice_update(&nine, &[-1, -2], &[3, 4], &[]),
        &[3, 4],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9],
    );
    // The source is not modified.
    assert_exact(&z, &[3, 4], &[0; 12]);
}

#[test]
fn take_and_take_along_axis() {
    // x[i, j] = 4 i + j
    let x = iota(&[3, 4]);
    let rows = i32_array(&[2, 0], &[2]);
    assert_exact(&x.take(&rows, 0), &[2, 4], &[8, 9, 10, 11, 0, 1, 2, 3]);
    let cols = i32_array(&[3, 3, 1], &[3]);
    assert_exact(&x.take(&cols, 1), &[3, 3], &[3, 3, 1, 7, 7, 5, 11, 11, 9]);
    // Indices of any shape replace the axis: [3, 4] with [2, 2] indices on axis 1.
    let idx = i32_array(&[0, 1, 2, 3], &[2, 2]);
    assert_eq!(x.take(&idx, 1).shape(), &[3, 2, 2]);
    assert_exact(&x.take(&idx, -1), &[3, 2, 2], &(0..12).collect::<Vec<_>>());
    // ALL takes from the flattened array, in the indices' shape.
    let flat_idx = i32_array(&[11, 0, 5, 6], &[2, 2]);
    assert_exact(&x.take(&flat_idx, ALL), &[2, 2], &[11, 0, 5, 6]);
    // Unsigned indices work too.
    let u = Array::from_slice(&[1u32, 2], &[2]);
    assert_exact(&x.take(&u, 0), &[2, 4], &[4, 5, 6, 7, 8, 9, 10, 11]);

    let along = i32_array(&[3, 0, 1, 1, 0, 2], &[3, 2]);
    assert_exact(&x.take_along_axis(&along, 1), &[3, 2], &[3, 0, 5, 5, 8, 10]);
    let along0 = i32_array(&[2, 0, 1, 0], &[1, 4]);
    assert_exact(&x.take_along_axis(&along0, 0), &[1, 4], &[8, 1, 6, 3]);
}

#[test]
fn pad_tile_broadcast() {
    let x = i32_array(&[1, 2, 3, 4], &[2, 2]);
    assert_exact(
        &x.pad(&[(1, 0), (0, 2)], 9),
        &[3, 4],
        &[9, 9, 9, 9, 1, 2, 9, 9, 3, 4, 9, 9],
    );
    let f = f32_array(&[1.0, 2.0], &[2]);
    assert_exact(
        &f.pad(&[(2, 1)], -0.5),
        &[5],
        &[-0.5f32, -0.5, 1.0, 2.0, -0.5],
    );

    assert_exact(
        &i32_array(&[1, 2, 3], &[3]).tile(&[2]),
        &[6],
        &[1, 2, 3, 1, 2, 3],
    );
    assert_exact(&x.tile(&[2, 1]), &[4, 2], &[1, 2, 3, 4, 1, 2, 3, 4]);
    assert_exact(&x.tile(&[1, 2]), &[2, 4], &[1, 2, 1, 2, 3, 4, 3, 4]);

    let row = i32_array(&[1, 2, 3], &[3]);
    assert_exact(&row.broadcast_to(&[2, 3]), &[2, 3], &[1, 2, 3, 1, 2, 3]);
    let col = i32_array(&[1, 2], &[2, 1]);
    assert_exact(&col.broadcast_to(&[2, 3]), &[2, 3], &[1, 1, 1, 2, 2, 2]);
    assert_exact(
        &Array::scalar(5i32).broadcast_to(&[2, 2]),
        &[2, 2],
        &[5, 5, 5, 5],
    );
}

// === fast ops =================================================================================

#[test]
fn rms_norm_and_layer_norm_match_numpy() {
    let x = fx_input("norm.x");
    let w = fx_input("norm.weight");
    let b = fx_input("norm.bias");
    let eps = fx_num("norm.eps") as f32;
    assert_fixture(&fast::rms_norm(&x, Some(&w), eps), "norm.rms", F32);
    assert_fixture(&fast::rms_norm(&x, None, eps), "norm.rms_no_weight", F32);
    assert_fixture(
        &fast::layer_norm(&x, Some(&w), Some(&b), eps),
        "norm.layer",
        F32,
    );
    assert_fixture(
        &fast::layer_norm(&x, None, None, eps),
        "norm.layer_no_affine",
        F32,
    );
}

#[test]
fn rope_matches_numpy() {
    let x = fx_input("rope.x"); // [batch 1, heads 2, seq 4, features 8]
    let base = fx_num("rope.base") as f32;
    let full = Rope {
        offset: 2,
        base,
        ..Rope::new(8)
    };
    assert_fixture(&fast::rope(&x, full), "rope.full_offset2", F32);
    // Only the first 4 features rotate; the other 4 pass through.
    let partial = Rope {
        base,
        ..Rope::new(4)
    };
    let y = fast::rope(&x, partial);
    assert_fixture(&y, "rope.dims4_offset0", F32);
    assert_eq!(f32s(&y.slice_axis(-1, 4, 8)), f32s(&x.slice_axis(-1, 4, 8)));
    // Position 0 is not rotated at all.
    assert_eq!(f32s(&y.slice_axis(-2, 0, 1)), f32s(&x.slice_axis(-2, 0, 1)));
}

#[test]
fn attention_matches_numpy() {
    let q = fx_input("sdpa.q"); // [1, 2, 3, 4]
    let k = fx_input("sdpa.k"); // [1, 2, 5, 4]
    let v = fx_input("sdpa.v");
    let scale = fx_num("sdpa.scale") as f32;
    let attend = |mask| fast::scaled_dot_product_attention(&q, &k, &v, scale, mask);
    assert_fixture(&attend(Mask::None), "sdpa.none", F32);
    // Three queries, five keys: query i sees keys 0..=i + 2.
    assert_fixture(&attend(Mask::Causal), "sdpa.causal", F32);

    let (shape, bits) = fx_tensor("sdpa.mask");
    let bits: Vec<bool> = bits.iter().map(|&b| b != 0.0).collect();
    assert!(bits.contains(&false), "the mask must hide something");
    let mask = Array::from_slice(&bits, &shape); // [3, 5], broadcast over batch and heads
    assert_fixture(&attend(Mask::Array(&mask)), "sdpa.masked", F32);
    // The same mask as additive float (0 / -inf) gives the same result.
    let additive = where_(&mask, 0.0, f64::NEG_INFINITY);
    assert_fixture(&attend(Mask::Array(&additive)), "sdpa.masked", F32);

    // Grouped-query attention: two query heads share one key/value head.
    let k0 = k.slice_axis(1, 0, 1);
    let v0 = v.slice_axis(1, 0, 1);
    let gqa = fast::scaled_dot_product_attention(&q, &k0, &v0, scale, Mask::None);
    assert_fixture(&gqa, "sdpa.gqa_kv_head0", F32);
}

// === convolution ==============================================================================

#[test]
fn conv2d_by_hand() {
    // 3x3 image 1..9 with a 2x2 kernel of ones: sums of each 2x2 window.
    let x = f32_array(
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        &[1, 3, 3, 1],
    );
    let ones = Array::ones(&[1, 2, 2, 1], Dtype::F32);
    assert_exact(
        &x.conv2d(&ones, Conv2d::default()),
        &[1, 2, 2, 1],
        &[12.0f32, 16.0, 24.0, 28.0],
    );
    // Zero padding of 1 and stride 2: windows at the corners of the padded 5x5 image.
    let p = Conv2d {
        stride: (2, 2),
        padding: (1, 1),
        ..Conv2d::default()
    };
    assert_exact(
        &x.conv2d(&ones, p),
        &[1, 2, 2, 1],
        &[1.0f32, 5.0, 11.0, 28.0],
    );
    // Two output channels: identity on channel 0, doubled top-left pixel on channel 1.
    let w = f32_array(&[1.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0], &[2, 2, 2, 1]);
    assert_exact(
        &x.conv2d(&w, Conv2d::default()),
        &[1, 2, 2, 2],
        &[1.0f32, 2.0, 2.0, 4.0, 4.0, 8.0, 5.0, 10.0],
    );
}

#[test]
fn conv2d_matches_numpy() {
    let x = fx_input("conv2d.x"); // [2, 4, 5, 2] NHWC
    let w = fx_input("conv2d.w"); // [3, 3, 3, 2] = [C_out, KH, KW, C_in]
    let pair = |path: &str| {
        let v = fx(path).as_array().expect("a pair");
        (
            v[0].as_i64().expect("int") as i32,
            v[1].as_i64().expect("int") as i32,
        )
    };
    let params = Conv2d {
        stride: pair("conv2d.stride"),
        padding: pair("conv2d.padding"),
        ..Conv2d::default()
    };
    assert_eq!(params.stride, (2, 1));
    assert_fixture(&x.conv2d(&w, params), "conv2d.out", ACCUM);
}

// === quantization =============================================================================

/// Rows of 128 with magnitudes from 1e-3 to 1e2, one row shifted to all-positive values
/// (so the affine bias matters) and one row with a single outlier.
fn quant_weights() -> (Vec<f32>, [i32; 2]) {
    let (rows, cols) = (8usize, 128usize);
    let mut w = gauss(rows * cols, 7);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let scale = 10f32.powf(r as f32 * 5.0 / 7.0 - 3.0);
        for v in row.iter_mut() {
            *v *= scale;
        }
        if r == 5 {
            row.iter_mut().for_each(|v| *v = v.abs() + 3.0);
        }
        if r == 6 {
            row[17] = 500.0;
        }
    }
    (w, [rows as i32, cols as i32])
}

/// Checks `q.matmul(x, true)` against `x @ deq.T` (computed here in f64 from the
/// dequantized matrix) and against `x @ w.T` within the quantization error.
#[track_caller]
fn check_quantized_matmul(q: &Quantized, w: &[f32], deq: &[f32], err_bound: &[f64]) {
    let (n, k) = (8usize, 128usize);
    let m = 3usize;
    let x = gauss(m * k, 11);
    let y = q.matmul(&f32_array(&x, &[m as i32, k as i32]), true);
    assert_eq!(y.shape(), &[m as i32, n as i32]);
    let y = f32s(&y);
    for i in 0..m {
        for j in 0..n {
            let xs = &x[i * k..(i + 1) * k];
            let (mut exact, mut magnitude, mut from_w, mut w_bound) = (0.0, 0.0, 0.0, 0.0);
            for t in 0..k {
                let (xv, dv) = (f64::from(xs[t]), f64::from(deq[j * k + t]));
                exact += xv * dv;
                magnitude += (xv * dv).abs();
                from_w += xv * f64::from(w[j * k + t]);
                w_bound += xv.abs() * err_bound[j * k + t];
            }
            let got = f64::from(y[i * n + j]);
            // Summing 128 float32 products in any order errs by at most about
            // 128 * 2^-24 * sum|x * w| (~7.6e-6 of it); 2e-5 leaves room for the kernel
            // rounding its dequantized weights once more.
            assert!(
                (got - exact).abs() <= 2e-5 * magnitude + 1e-30,
                "{}: y[{i}, {j}] = {got}, x @ dequantize(w).T = {exact}",
                q.mode
            );
            // Against the original weights, the quantization error adds up to at most
            // sum |x| * bound.
            assert!(
                (got - from_w).abs() <= w_bound + 2e-5 * magnitude + 1e-30,
                "{}: y[{i}, {j}] = {got}, x @ w.T = {from_w}, bound {w_bound}",
                q.mode
            );
        }
    }
}

#[test]
fn affine_quantization_round_trip() {
    let (w, shape) = quant_weights();
    let w_arr = f32_array(&w, &shape);
    for group in [32, 64] {
        let q = Quantized::new(&w_arr, group, 8, QuantMode::Affine).unwrap();
        let groups = 128 / group;
        // 8-bit values, four to a uint32; one float32 scale and bias per group.
        assert_eq!(q.weights.dtype(), Dtype::U32);
        assert_eq!(q.weights.shape(), &[8, 32]);
        assert_eq!(q.scales.dtype(), Dtype::F32);
        assert_eq!(q.scales.shape(), &[8, groups]);
        let biases = q.biases.as_ref().expect("affine has biases");
        assert_eq!(biases.shape(), &[8, groups]);
        assert_eq!(q.dequantize(None).dtype(), Dtype::F32);

        let deq_arr = q.dequantize(Some(Dtype::F32));
        assert_eq!(deq_arr.shape(), &shape);
        let deq = f32s(&deq_arr);
        let scales = f32s(&q.scales);
        let biases = f32s(biases);

        // The bound, derived from MLX's affine scheme: with range = hi - lo of a group and
        // s0 = range / 255, MLX makes the endpoint of larger magnitude (|edge| >= range / 2
        // = 127.5 s0) exact: bias = edge, scale = edge / round(edge / s0), signed to point
        // into the group. As |round(edge / s0)| is within 1/2 of |edge| / s0 >= 127.5,
        //     s0 * 127.5 / 128 <= |scale| <= s0 * 127.5 / 127.
        // Values inside the grid bias + k * scale (k = 0..=255) round to the nearest step:
        // error <= |scale| / 2. The grid may stop short of the far endpoint by
        // range - 255 |scale| <= 255 s0 / 256 <= |scale|, and values beyond are clipped
        // to its end: error <= |scale|. Float32 arithmetic adds a few ulps of the group's
        // largest magnitude.
        let mut bound = vec![0.0; w.len()];
        let mut worst_inside = 0.0f64;
        for row in 0..8 {
            for g in 0..groups as usize {
                let at = row * 128 + g * group as usize;
                let ws = &w[at..at + group as usize];
                let ds = &deq[at..at + group as usize];
                let s = f64::from(scales[row * groups as usize + g]);
                let b = f64::from(biases[row * groups as usize + g]);
                let lo = ws.iter().copied().fold(f32::INFINITY, f32::min) as f64;
                let hi = ws.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let s0 = (hi - lo) / 255.0;
                let slack = 8.0 * f64::from(f32::EPSILON) * lo.abs().max(hi.abs());
                assert!(
                    s.abs() >= s0 * 127.5 / 128.0 * (1.0 - 1e-6)
                        && s.abs() <= s0 * 127.5 / 127.0 * (1.0 + 1e-6),
                    "group {row}/{g}: scale {s} for range {lo}..{hi}"
                );
                let (grid_lo, grid_hi) = if s > 0.0 {
                    (b, b + 255.0 * s)
                } else {
                    (b + 255.0 * s, b)
                };
                for (i, (&wv, &dv)) in ws.iter().zip(ds).enumerate() {
                    let (wv, dv) = (f64::from(wv), f64::from(dv));
                    // Every dequantized value is on the grid.
                    let k = (dv - b) / s;
                    assert!(
                        (k - k.round()).abs() < 1e-3 && (-1e-3..=255.001).contains(&k),
                        "group {row}/{g}: {dv} is step {k} of the grid"
                    );
                    let err = (wv - dv).abs();
                    bound[at + i] = s.abs() + slack;
                    assert!(
                        err <= bound[at + i],
                        "group {row}/{g}: |{wv} - {dv}| > |scale| {s}"
                    );
                    if (grid_lo..=grid_hi).contains(&wv) {
                        assert!(
                            err <= s.abs() / 2.0 + slack,
                            "group {row}/{g}: |{wv} - {dv}| > |scale| / 2 = {}",
                            s.abs() / 2.0
                        );
                        worst_inside = worst_inside.max(err / s.abs());
                    }
                }
            }
        }
        // Rounding to a step really happened (the round trip is not the identity).
        assert!(worst_inside > 0.4, "worst error {worst_inside} steps");
        check_quantized_matmul(&q, &w, &deq, &bound);
    }
}

#[test]
fn e4m3_conversions_and_products() {
    // Exactly representable E4M3 values and their bit patterns (sign, 4 exponent bits with
    // bias 7, 3 mantissa bits): 1 = 0x38, -2 = 0xC0, 448 (the largest) = 0x7E, 2^-9 (the
    // smallest subnormal) = 0x01, 0.
    let values = [1.0f32, -2.0, 448.0, 1.0 / 512.0, 0.0, 1.125];
    let bits = f32_array(&values, &[6]).to_fp8();
    assert_exact(&bits, &[6], &[0x38u8, 0xC0, 0x7E, 0x01, 0x00, 0x39]);
    assert_exact(&bits.from_fp8(Dtype::F32), &[6], &values);
    // Rounding to nearest: 1.06 lies between 1 and 1.125.
    let rounded = f32_array(&[1.06, 1.07], &[2]).to_fp8().from_fp8(Dtype::F32);
    assert_exact(&rounded, &[2], &[1.0f32, 1.125]);

    // The product of E4M3 rows equals the product of the values they stand for, each row
    // times its scale, computed here in float64: on the CPU the float32 product of the
    // dequantized operands; on an FP8 GPU cuBLASLt's kernel, whose fast accumulation keeps
    // fewer bits (about 2^-13 of the sum), the scales applied in its epilogue or after it.
    // K = 384 runs over several of the kernels' K blocks; rows and channels of different
    // magnitudes make each scale count; one or two rows take the GPU's other path (their
    // scales are too small for cuBLASLt's alignment).
    for (m, n, k) in [(5, 16, 32), (6, 32, 384), (1, 16, 384), (2, 32, 32)] {
        let spread = |rows: i32, seed: u64| {
            let by_row = random::uniform(0.01, 10.0, &[rows, 1], Dtype::F32, &random::key(seed));
            random::normal(&[rows, k], Dtype::F32, &random::key(seed + 1)) * by_row
        };
        let x = Fp8Rows::quantize(&spread(m, 1));
        let w = Fp8Rows::quantize(&(spread(n, 3) * 0.1));
        let (xv, wv) = (
            f32s(&x.dequantize(Dtype::F32)),
            f32s(&w.dequantize(Dtype::F32)),
        );
        let product = mlx::ops::fp8_matmul(&x, &w, Dtype::F32);
        assert_eq!(product.shape(), &[m, n]);
        let got = f32s(&product);
        let tolerance = if mlx::ops::fp8_kernel(n, k) {
            1e-3
        } else {
            1e-5
        };
        let (n, k) = (n as usize, k as usize);
        for (i, g) in got.iter().enumerate() {
            let (row, col) = (&xv[i / n * k..][..k], &wv[i % n * k..][..k]);
            let dot = |f: fn(f64) -> f64| -> f64 {
                row.iter()
                    .zip(col)
                    .map(|(a, b)| f(f64::from(*a) * f64::from(*b)))
                    .sum()
            };
            let (exact, magnitude) = (dot(|v| v), dot(f64::abs));
            assert!(
                (f64::from(*g) - exact).abs() <= tolerance * magnitude,
                "[{m}, {k}] x [{n}, {k}] output {i}: {g} vs {exact}"
            );
        }
    }
    let x = Fp8Rows::quantize(&random::normal(&[5, 32], Dtype::F32, &random::key(1)));
    let w = Fp8Rows::quantize(&random::normal(&[16, 32], Dtype::F32, &random::key(2)));
    // Leading axes are rows: [2, 5, 32] rows multiply as the [10, 32] they are.
    let batched = Fp8Rows::quantize(&random::normal(&[2, 5, 32], Dtype::F32, &random::key(4)));
    let flat = Fp8Rows {
        values: batched.values.reshape(&[10, 32]),
        scales: batched.scales.reshape(&[10]),
    };
    let product = mlx::ops::fp8_matmul(&batched, &w, Dtype::F32);
    assert_eq!(product.shape(), &[2, 5, 16]);
    assert_exact(
        &product.reshape(&[160]),
        &[160],
        &f32s(&mlx::ops::fp8_matmul(&flat, &w, Dtype::F32)),
    );
    // Operands that are not E4M3 rows of one K with a scale each are errors, not crashes.
    let floats = Fp8Rows {
        values: x.values.astype(Dtype::F32),
        scales: x.scales.clone(),
    };
    assert!(mlx::ops::fp8_matmul(&floats, &w, Dtype::F32)
        .check()
        .is_err());
    let narrow = Fp8Rows {
        values: w.values.slice_axis(1, 0, 16),
        scales: w.scales.clone(),
    };
    let err = mlx::ops::fp8_matmul(&x, &narrow, Dtype::F32)
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fp8_matmul") && err.contains("[16, 16] uint8"),
        "{err}"
    );
    let unscaled = Fp8Rows {
        values: w.values.clone(),
        scales: w.scales.slice_axis(0, 0, 8),
    };
    let err = mlx::ops::fp8_matmul(&x, &unscaled, Dtype::F32)
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("one per row") && err.contains("[8] float32"),
        "{err}"
    );
    if mlx::default_device().is_ok_and(|d| d == mlx::Device::Cpu) {
        assert!(!mlx::ops::fp8_kernel(16, 32));
    }
}

/// Checks per-row E4M3 quantization of `x` (`[rows, k]` float32 values `v`): each scale is
/// the row's largest magnitude over 448, and each value comes back within half an E4M3
/// step (3 mantissa bits; subnormal steps below 2^-6 of the scale).
fn check_fp8_rows(v: &[f32], rows: usize, k: usize, q: &Fp8Rows) {
    assert_eq!(q.values.dtype(), Dtype::U8);
    assert_eq!(q.values.shape(), &[rows as i32, k as i32]);
    assert_eq!(q.scales.shape(), &[rows as i32]);
    let scales = f32s(&q.scales);
    let back = f32s(&q.dequantize(Dtype::F32));
    let mut worst = 0.0f32;
    for r in 0..rows {
        let row = &v[r * k..(r + 1) * k];
        let amax = row.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let expected = if amax > 0.0 { amax / 448.0 } else { 1.0 };
        assert_eq!(scales[r], expected, "row {r}");
        for (i, (x, b)) in row.iter().zip(&back[r * k..]).enumerate() {
            let step = (x.abs() / scales[r]).max(2f32.powi(-6)) / 8.0 * scales[r];
            let err = (x - b).abs();
            assert!(
                err <= step / 2.0 * 1.0001,
                "row {r} [{i}]: {x} came back as {b}"
            );
            worst = worst.max(err / step);
        }
    }
    // Rounding really happened.
    assert!(worst > 0.3, "worst error {worst} steps");
}

#[test]
fn fp8_rows_quantize_to_the_nearest_e4m3_step_of_their_scale() {
    // Rows of 4096 and 100 values (in bfloat16, the GPU kernel's packed and single-value
    // paths, held in registers), of 20000 and 2100 (the same paths, read twice; float32
    // rows of 100 and 2100 are packed and held), a row of zeros (scale 1), a row with one
    // large value.
    for k in [4096usize, 100, 20000, 2100] {
        let rows = 6;
        let mut v = f32s(&random::normal(
            &[rows as i32, k as i32],
            Dtype::F32,
            &random::key(7),
        ));
        v[..k].iter_mut().for_each(|x| *x = 0.0);
        v[k] = 3.0e4;
        v[2 * k..3 * k].iter_mut().for_each(|x| *x *= 1e-3);
        let x = f32_array(&v, &[rows as i32, k as i32]);
        check_fp8_rows(&v, rows, k, &Fp8Rows::quantize(&x));
        // bfloat16 rows quantize the values they hold.
        let bf16 = x.astype(Dtype::Bf16);
        let held = f32s(&bf16.astype(Dtype::F32));
        check_fp8_rows(&held, rows, k, &Fp8Rows::quantize(&bf16));
    }
    // Leading axes are rows too.
    let q = Fp8Rows::quantize(&Array::ones(&[2, 3, 16], Dtype::F32));
    assert_eq!(q.scales.shape(), &[2, 3]);
    assert_exact(&q.values.reshape(&[96]), &[96], &[0x7Eu8; 96]);
    // Empty arrays quantize to their shapes; a row of nothing is a row of zeros (scale 1).
    // Products of them are what the dense product of nothing is.
    let no_rows = Fp8Rows::quantize(&Array::zeros(&[0, 16], Dtype::F32));
    assert_eq!(
        (no_rows.values.shape(), no_rows.scales.shape()),
        (&[0, 16][..], &[0][..])
    );
    let w = Fp8Rows::quantize(&Array::ones(&[8, 16], Dtype::F32));
    let product = mlx::ops::fp8_matmul(&no_rows, &w, Dtype::Bf16);
    assert_eq!(
        (product.shape(), product.dtype()),
        (&[0, 8][..], Dtype::Bf16)
    );
    product.check().unwrap();
    let empty_rows = Fp8Rows::quantize(&Array::zeros(&[2, 0], Dtype::F32));
    assert_eq!(empty_rows.values.shape(), &[2, 0]);
    assert_exact(&empty_rows.scales, &[2], &[1.0f32, 1.0]);
    let of_nothing = Fp8Rows::quantize(&Array::zeros(&[8, 0], Dtype::F32));
    assert_exact(
        &mlx::ops::fp8_matmul(&empty_rows, &of_nothing, Dtype::F32),
        &[2, 8],
        &[0.0f32; 16],
    );
    // What cannot be quantized by rows is an error naming the op.
    for bad in [Array::ones(&[4], Dtype::I32), Array::scalar(1.0f32)] {
        let err = Fp8Rows::quantize(&bad)
            .values
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("fp8_quantize"), "{err}");
    }
}

#[test]
fn fp8_rows_of_a_swiglu_are_those_of_its_product() {
    // Rows of 4096 and 100 values (the GPU kernel's packed and single-value paths, held in
    // registers), of 20000 and 2100 (read twice), in the compute dtypes; leading axes are
    // rows. The GPU kernel computes the product in its own
    // registers, so it may round an element one bfloat16 step the other way: its scale
    // within a step of the composed one, its bytes within one E4M3 step.
    for (shape, dtype) in [
        (&[2, 3, 4096][..], Dtype::Bf16),
        (&[5, 100][..], Dtype::Bf16),
        (&[2, 3, 4096][..], Dtype::F32),
        (&[3, 20000][..], Dtype::Bf16),
        (&[3, 2100][..], Dtype::Bf16),
    ] {
        let gate = (random::normal(shape, Dtype::F32, &random::key(21)) * 3.0).astype(dtype);
        let up = random::normal(shape, Dtype::F32, &random::key(22)).astype(dtype);
        let fused = Fp8Rows::quantize_swiglu(&gate, &up);
        let composed = Fp8Rows::quantize(&(gate.silu() * &up));
        assert_eq!(fused.values.shape(), shape);
        assert_eq!(fused.scales.shape(), &shape[..shape.len() - 1]);
        for (f, c) in f32s(&fused.scales).iter().zip(f32s(&composed.scales)) {
            assert!(
                (f - c).abs() <= c * 2f32.powi(-7),
                "{dtype:?}: scale {f} vs {c}"
            );
        }
        let bytes = |q: &Fp8Rows| q.values.to_vec::<u8>().unwrap();
        let (f, c) = (bytes(&fused), bytes(&composed));
        let differ = f.iter().zip(&c).filter(|(a, b)| a != b).count();
        assert!(
            f.iter().zip(&c).all(|(a, b)| a.abs_diff(*b) <= 1) && differ * 1000 <= f.len(),
            "{dtype:?} {shape:?}: {differ} of {} bytes differ",
            f.len()
        );
    }
    // Operands that do not pair are an error naming the op and both.
    let gate = Array::ones(&[2, 16], Dtype::Bf16);
    for up in [
        Array::ones(&[2, 8], Dtype::Bf16),
        Array::ones(&[2, 16], Dtype::F32),
    ] {
        let err = Fp8Rows::quantize_swiglu(&gate, &up)
            .scales
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fp8_quantize_swiglu") && err.contains("[2, 16] bfloat16"),
            "{err}"
        );
    }
}

#[test]
fn fp8_products_write_any_float_dtype_from_rows_of_any_rank() {
    // At a transformer's widths the unscaled products of E4M3 values pass float16's
    // largest (65504): a float16 result must still be the float32 one, rounded.
    let k = 3840;
    let x = Fp8Rows::quantize(&random::normal(&[4, k], Dtype::F32, &random::key(11)));
    let w = Fp8Rows::quantize(&random::normal(&[16, k], Dtype::F32, &random::key(12)));
    let single = f32s(&mlx::ops::fp8_matmul(&x, &w, Dtype::F32));
    let half = mlx::ops::fp8_matmul(&x, &w, Dtype::F16);
    assert_eq!(half.dtype(), Dtype::F16);
    for (h, s) in f32s(&half.astype(Dtype::F32)).iter().zip(&single) {
        assert!((h - s).abs() <= 1e-3 * s.abs() + 1e-2, "{h} vs {s}");
    }
    // A vector is one row.
    let v = Fp8Rows::quantize(&random::normal(&[k], Dtype::F32, &random::key(13)));
    let row = Fp8Rows {
        values: v.values.reshape(&[1, k]),
        scales: v.scales.reshape(&[1]),
    };
    let product = mlx::ops::fp8_matmul(&v, &w, Dtype::F32);
    assert_eq!(product.shape(), &[16]);
    // (The same up to rounding: BLAS multiplies a vector by another kernel.)
    let rows = f32s(&mlx::ops::fp8_matmul(&row, &w, Dtype::F32));
    for (p, r) in f32s(&product).iter().zip(&rows) {
        assert!((p - r).abs() <= 1e-5 * r.abs().max(1.0), "{p} vs {r}");
    }
    // Integers are not a product's dtype.
    let err = mlx::ops::fp8_matmul(&x, &w, Dtype::I32)
        .check()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("floating-point dtype") && err.contains("int32"),
        "{err}"
    );
}

#[test]
fn fp8_rows_keep_non_finite_values_non_finite() {
    // A NaN is passed over by its row's scale and stays a NaN; an infinity makes its row's
    // scale infinite, and so the row's values NaN or zero. Either way the products of the
    // row are not finite, on the GPU's kernel as on the composed path.
    let mut v = [[0.5f32; 32], [0.25; 32]].concat();
    v[1] = f32::NAN;
    v[2] = 2.0;
    v[32 + 3] = f32::INFINITY;
    let q = Fp8Rows::quantize(&f32_array(&v, &[2, 32]));
    let scales = f32s(&q.scales);
    assert_eq!(scales[0], 2.0 / 448.0);
    assert_eq!(scales[1], f32::INFINITY);
    let values = f32s(&q.values.from_fp8(Dtype::F32));
    assert!(values[1].is_nan(), "{}", values[1]);
    assert_eq!(values[2], 448.0);
    assert!(values[32 + 3].is_nan(), "{}", values[32 + 3]);
    let w = Fp8Rows::quantize(&Array::ones(&[16, 32], Dtype::F32));
    let product = f32s(&mlx::ops::fp8_matmul(&q, &w, Dtype::F32));
    assert!(product.iter().all(|p| p.is_nan()), "{product:?}");
}

#[test]
fn mxfp8_quantization_round_trip() {
    let (w, shape) = quant_weights();
    let w_arr = f32_array(&w, &shape);
    let group = 32usize;
    let q = Quantized::new(&w_arr, group as i32, 8, QuantMode::Mxfp8).unwrap();
    // One FP8 byte per value, four to a uint32; one E8M0 byte (a power of two) per 32.
    assert_eq!(q.weights.dtype(), Dtype::U32);
    assert_eq!(q.weights.shape(), &[8, 32]);
    assert_eq!(q.scales.dtype(), Dtype::U8);
    assert_eq!(q.scales.shape(), &[8, 4]);
    assert!(q.biases.is_none());
    let deq_arr = q.dequantize(Some(Dtype::F32));
    assert_eq!(deq_arr.shape(), &shape);
    let deq = f32s(&deq_arr);
    let exponents = read::<u8>(&q.scales);

    // The bound: E8M0 byte e stands for the scale s = 2^(e - 127). Each value is stored
    // as the FP8 E4M3 number nearest to w / s (3 mantissa bits; largest finite 448;
    // normal down to 2^-6, subnormal steps of 2^-9 below). If the scale is large enough
    // that max|w| / s <= 448 (no saturation), rounding to nearest errs by at most half an
    // ulp: 2^-4 relative for normal values, 2^-10 in units of s for subnormal ones, so
    //     |w - deq| <= 2^-4 |w| + 2^-10 s.
    // Scaling by a power of two is exact in float32, so no other slack is needed. The
    // scale should also be the smallest power of two that avoids saturation
    // (max|w| / s > 224), else precision is thrown away; then the bound is also
    // <= 2^-4 max|w| + max|w| / 229376 for the group.
    let mut bound = vec![0.0; w.len()];
    let mut worst_relative = 0.0f64;
    for (gi, &e) in exponents.iter().enumerate() {
        assert!(e != 0 && e != 255, "group {gi}: scale byte {e}");
        let s = 2f64.powi(i32::from(e) - 127);
        let at = gi * group;
        let ws = &w[at..at + group];
        let amax = ws.iter().map(|v| f64::from(v.abs())).fold(0.0, f64::max);
        assert!(
            amax / s <= 448.0 && amax / s > 224.0,
            "group {gi}: max |w| {amax} is {} scales of {s}",
            amax / s
        );
        for (i, &wv) in ws.iter().enumerate() {
            let (wv, dv) = (f64::from(wv), f64::from(deq[at + i]));
            let err = (wv - dv).abs();
            bound[at + i] = wv.abs() / 16.0 + s / 1024.0;
            assert!(
                err <= bound[at + i],
                "group {gi}: |{wv} - {dv}| = {err} > 2^-4 |w| + 2^-10 s"
            );
            assert!(err <= amax / 16.0 + amax / 229_376.0);
            if wv.abs() / s >= 2f64.powi(-6) {
                worst_relative = worst_relative.max(err / wv.abs());
            }
        }
    }
    // E4M3 rounding really happened: some value lost close to its half ulp.
    assert!(worst_relative > 2f64.powi(-5), "worst {worst_relative}");
    check_quantized_matmul(&q, &w, &deq, &bound);
}

/// The value of an E4M3 byte (sign, 4 exponent bits of bias 7, 3 mantissa bits), computed
/// here; NaN for S.1111.111.
fn e4m3_value(b: u8) -> f64 {
    let (e, m) = (i32::from((b >> 3) & 0xf), f64::from(b & 0x7));
    let magnitude = match (e, m) {
        (15, 7.0) => f64::NAN,
        (0, _) => m * 2f64.powi(-9),
        _ => (1.0 + m / 8.0) * 2f64.powi(e - 7),
    };
    if b & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

#[test]
fn eight_bit_weights_dequantize_to_their_formulas() {
    // Rows of 256 over magnitudes from 1e-3 to 1e2, in each compute dtype (on a GPU the
    // 8-bit formats take the runtime's own kernel: 16 bytes of weights a thread).
    let (rows, cols) = (24usize, 256usize);
    let mut w = gauss(rows * cols, 11);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let scale = 10f32.powf(r as f32 * 5.0 / 23.0 - 3.0);
        row.iter_mut().for_each(|v| *v *= scale);
    }
    let w = f32_array(&w, &[rows as i32, cols as i32]);
    let bytes = |q: &Quantized| -> Vec<u8> {
        read::<u32>(&q.weights)
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .collect()
    };
    for (dtype, half_ulp) in [
        (Dtype::Bf16, 2f64.powi(-8)),
        (Dtype::F16, 2f64.powi(-11)),
        (Dtype::F32, 2f64.powi(-24)),
    ] {
        // Affine: `scale * q + bias` in the scales' dtype, rounded after the product and
        // after the sum (or once, where the GPU fuses them).
        let q = Quantized::new(&w.astype(dtype), 64, 8, QuantMode::Affine).unwrap();
        let deq = q.dequantize(None);
        assert_eq!(
            (deq.dtype(), deq.shape()),
            (dtype, &[rows as i32, cols as i32][..])
        );
        let as_f32 = |a: &Array| f32s(&a.astype(Dtype::F32));
        let (scales, biases) = (as_f32(&q.scales), as_f32(q.biases.as_ref().unwrap()));
        for (i, (&got, &byte)) in as_f32(&deq).iter().zip(&bytes(&q)).enumerate() {
            let (s, b) = (f64::from(scales[i / 64]), f64::from(biases[i / 64]));
            let product = s * f64::from(byte);
            let exact = product + b;
            let bound = half_ulp * (product.abs() + exact.abs()) + 1e-300;
            assert!(
                (f64::from(got) - exact).abs() <= bound,
                "{dtype:?} affine element {i}: {got}, {s} * {byte} + {b} = {exact}"
            );
        }
        // mxfp8: the E4M3 value times 2^(e - 127), exact in float32, rounded once to the
        // requested dtype.
        let q = Quantized::new(&w.astype(dtype), 32, 8, QuantMode::Mxfp8).unwrap();
        let exponents = read::<u8>(&q.scales);
        let exact: Vec<f32> = bytes(&q)
            .iter()
            .enumerate()
            .map(|(i, &byte)| {
                (e4m3_value(byte) * 2f64.powi(i32::from(exponents[i / 32]) - 127)) as f32
            })
            .collect();
        let exact = f32_array(&exact, &[rows as i32, cols as i32]);
        for out in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            let deq = q.dequantize(Some(out));
            assert_eq!(deq.dtype(), out);
            let (got, want) = (as_f32(&deq), as_f32(&exact.astype(out)));
            let differ = got
                .iter()
                .zip(&want)
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(
                differ.is_none(),
                "{dtype:?} mxfp8 to {out:?}: element {differ:?} differs"
            );
        }
    }
}

// === random ===================================================================================

#[test]
fn same_key_same_numbers_different_keys_differ() {
    let a = f32s(&random::normal(&[1000], Dtype::F32, &random::key(42)));
    let b = f32s(&random::normal(&[1000], Dtype::F32, &random::key(42)));
    let c = f32s(&random::normal(&[1000], Dtype::F32, &random::key(43)));
    assert_eq!(a, b);
    let same = a.iter().zip(&c).filter(|(x, y)| x == y).count();
    assert_eq!(same, 0, "keys 42 and 43 agree on {same} of 1000 samples");

    let u1 = f32s(&random::uniform(
        0.0,
        1.0,
        &[1000],
        Dtype::F32,
        &random::key(7),
    ));
    let u2 = f32s(&random::uniform(
        0.0,
        1.0,
        &[1000],
        Dtype::F32,
        &random::key(7),
    ));
    let u3 = f32s(&random::uniform(
        0.0,
        1.0,
        &[1000],
        Dtype::F32,
        &random::key(8),
    ));
    assert_eq!(u1, u2);
    assert_ne!(u1, u3);

    // A key is two uint32 words; split derives distinct keys, reproducibly.
    let key = random::key(42);
    assert_eq!(key.dtype(), Dtype::U32);
    assert_eq!(key.shape(), &[2]);
    let parts = random::split(&key, 3);
    assert_eq!(parts.len(), 3);
    let words: Vec<Vec<u32>> = parts.iter().map(read::<u32>).collect();
    assert_eq!(words[0].len(), 2);
    assert_ne!(words[0], words[1]);
    assert_ne!(words[1], words[2]);
    assert_ne!(words[0], words[2]);
    assert!(!words.contains(&read::<u32>(&key)));
    let again: Vec<Vec<u32>> = random::split(&key, 3).iter().map(read::<u32>).collect();
    assert_eq!(words, again);
    let s0 = f32s(&random::normal(&[100], Dtype::F32, &parts[0]));
    let s1 = f32s(&random::normal(&[100], Dtype::F32, &parts[1]));
    assert_ne!(s0, s1);
}

#[test]
fn normal_samples_are_standard_normal() {
    let n = 100_000;
    let x = random::normal(&[n], Dtype::F32, &random::key(1234));
    assert_eq!(x.shape(), &[n]);
    let x = f32s(&x);
    let nf = n as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / nf;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (nf - 1.0);
    let within_one = x.iter().filter(|v| v.abs() < 1.0).count() as f64 / nf;
    // Standard errors over 100k samples: mean 1/sqrt(n) = 0.0032, standard deviation
    // 1/sqrt(2n) = 0.0022, the fraction within one sigma (0.6827) sqrt(p(1-p)/n) = 0.0015.
    // The bounds are 4.5 to 5 standard errors (and the key is fixed, so this never flakes).
    assert!(mean.abs() < 0.015, "mean {mean}");
    assert!((var.sqrt() - 1.0).abs() < 0.01, "std {}", var.sqrt());
    assert!(
        (within_one - 0.6827).abs() < 0.007,
        "P(|x| < 1) = {within_one}"
    );

    let h = random::normal(&[16], Dtype::Bf16, &random::key(1));
    assert_eq!(h.dtype(), Dtype::Bf16);
}

#[test]
fn uniform_samples_fill_the_half_open_interval() {
    let n = 100_000;
    let (low, high) = (-2.0, 3.0);
    let x = f32s(&random::uniform(
        low,
        high,
        &[n],
        Dtype::F32,
        &random::key(99),
    ));
    assert_eq!(x.len(), n as usize);
    let (lo, hi) = (low as f32, high as f32);
    assert!(
        x.iter().all(|&v| (lo..hi).contains(&v)),
        "a sample left [low, high)"
    );
    // The gap between an end and the nearest of 100k samples exceeds 5e-4 (ten times its
    // expected 5 / 100k) with probability e^-10; the mean is within ~5 standard errors
    // (5 / sqrt(12 n) = 0.0046) of the middle.
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!(min < lo + 5e-4 && max > hi - 5e-4, "range {min}..{max}");
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    assert!((mean - 0.5).abs() < 0.025, "mean {mean}");

    let h = random::uniform(0.0, 1.0, &[64], Dtype::F16, &random::key(5));
    assert_eq!(h.dtype(), Dtype::F16);
    assert!(read::<f16>(&h)
        .iter()
        .all(|v| (0.0..1.0).contains(&v.to_f32())));
}

#[test]
fn where_types_a_scalar_branch_from_the_other_branch() {
    let mask = Array::from_slice(&[true, false], &[2]);
    let b = Array::from_slice(&[bf16::from_f32(2.0), bf16::from_f32(3.0)], &[2]);
    let left = where_(&mask, 1.0, &b);
    assert_eq!(left.dtype(), Dtype::Bf16);
    assert_eq!(
        read::<bf16>(&left),
        vec![bf16::from_f32(1.0), bf16::from_f32(3.0)]
    );
    let right = where_(&mask, &b, 1.0);
    assert_eq!(right.dtype(), Dtype::Bf16);
}
