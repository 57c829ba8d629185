//! Every failure is an `Err`, never a panic or an abort, and says what went wrong where:
//! the op, its operands' dtypes and shapes, and the caller's line in this file.
//!
//! Each failing op is written on one line together with `line!()` (through [`here!`]), so
//! the tests can compare the error's location with the line that asked for the op.

use mlx::fast::{self, scaled_dot_product_attention as sdpa, Mask};
use mlx::ops::{Conv2d, QuantMode, Quantized, ALL};
use mlx::{concatenate, stack, where_, Array, Device, Dtype, Error};

// === helpers ==================================================================================

/// The value of `$e` and the line it is written on.
macro_rules! here {
    ($e:expr) => {
        ($e, line!())
    };
}

/// A float32 array of `shape` (values 0, 1, 2, ...).
fn f32s(shape: &[i32]) -> Array {
    let n: i32 = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| i as f32).collect();
    Array::from_slice(&data, shape)
}

/// `err` is an `Error::Op` of `op` on `operands`, raised at `line` of this file, and its
/// Display string says all of that.
#[track_caller]
fn assert_op_error(err: &Error, op: &str, operands: &str, line: u32) {
    let Error::Op {
        op: got_op,
        operands: got_operands,
        message,
        location,
    } = err
    else {
        panic!("expected Error::Op from {op}, got {err:?}");
    };
    assert_eq!(*got_op, op, "op of {err}");
    assert_eq!(got_operands, operands, "operands of {err}");
    assert_eq!(location.file(), file!(), "file of {err}");
    assert_eq!(location.line(), line, "line of {err}");
    assert!(!message.is_empty(), "empty message in {err:?}");
    let text = err.to_string();
    let call = format!("{op}({operands})");
    let at = format!("{}:{line}:", file!());
    assert!(text.contains(&call), "{text:?} lacks {call:?}");
    assert!(text.contains(&at), "{text:?} lacks {at:?}");
    assert!(
        text.contains(message.as_str()),
        "{text:?} lacks the message"
    );
}

/// `a` is a failed array carrying that error, and every way of reading or evaluating it
/// returns the same error.
#[track_caller]
fn assert_failed(a: &Array, op: &str, operands: &str, line: u32) {
    let err = a.error().expect("the array should have failed");
    assert_op_error(err, op, operands, line);
    let expected = err.to_string();
    let same = |what: &str, got: Result<(), Error>| {
        let got = got.expect_err(what);
        assert_op_error(&got, op, operands, line);
        assert_eq!(got.to_string(), expected, "{what}");
    };
    same("check", a.check().map(|_| ()));
    same("eval", mlx::eval([a]));
    same("Array::eval", a.eval());
    same("async_eval", mlx::async_eval([a]));
    same("to_vec", a.to_vec::<f32>().map(|_| ()));
    same("item", a.item::<f32>().map(|_| ()));
    assert!(!a.is_evaluated());
    assert!(a.to_string().contains(&expected), "Display: {a}");
}

/// The message of an `Error::Op`.
fn message(err: &Error) -> &str {
    match err {
        Error::Op { message, .. } => message,
        other => panic!("expected Error::Op, got {other:?}"),
    }
}

// === shapes ===================================================================================

/// A matmul of `[2, 3]` by `[4, 5]` fails and says so with both shapes.
#[test]
fn matmul_shape_mismatch() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[4, 5]));
    let (c, line) = here!(a.matmul(&b));
    assert_failed(&c, "matmul", "float32[2, 3], float32[4, 5]", line);
}

/// `+` of shapes that do not broadcast fails (the operator reports itself as `add`).
#[test]
fn broadcast_mismatch_in_add() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[4]));
    let (c, line) = here!(&a + &b);
    assert_failed(&c, "add", "float32[2, 3], float32[4]", line);
    // The scalar-on-the-left and owned forms go through the same checks.
    let (d, line) = here!(a.clone() * f32s(&[2, 2]));
    assert_failed(&d, "mul", "float32[2, 3], float32[2, 2]", line);
}

/// Axis 2 of a 2-D array is rejected by every op that takes an axis.
#[test]
fn bad_axes() {
    let a = f32s(&[2, 3]);
    let ops = "float32[2, 3]";
    let (x, line) = here!(a.sum(2, false));
    assert_failed(&x, "sum", ops, line);
    let (x, line) = here!(a.mean(&[0, -3], true));
    assert_failed(&x, "mean", ops, line);
    let (x, line) = here!(a.softmax(2));
    assert_failed(&x, "softmax", ops, line);
    let (x, line) = here!(a.argmax(2, false));
    assert_failed(&x, "argmax", ops, line);
    let (x, line) = here!(a.argmin(&[0, 1], false));
    assert_failed(&x, "argmin", ops, line);
    let (x, line) = here!(a.expand_dims(5));
    assert_failed(&x, "expand_dims", ops, line);
    let (x, line) = here!(a.expand_dims(ALL));
    assert_failed(&x, "expand_dims", ops, line);
    let (x, line) = here!(a.squeeze(5));
    assert_failed(&x, "squeeze", ops, line);
    let (x, line) = here!(a.slice_axis(2, 0, 1));
    assert_failed(&x, "slice_axis", ops, line);
    let (x, line) = here!(a.slice_axis(-3, 0, 1));
    assert_failed(&x, "slice_axis", ops, line);
    let (x, line) = here!(a.cumsum(2, false, true));
    assert_failed(&x, "cumsum", ops, line);
    let (x, line) = here!(a.transpose(&[0, 2]));
    assert_failed(&x, "transpose", ops, line);
}

/// Squeezing an axis whose size is not 1 is an error, not a no-op.
#[test]
fn squeeze_of_a_long_axis() {
    let a = f32s(&[2, 3]);
    let (x, line) = here!(a.squeeze(0));
    assert_failed(&x, "squeeze", "float32[2, 3]", line);
}

/// Reshaping 6 elements into 8 fails, naming the source shape.
#[test]
fn bad_reshape() {
    let a = f32s(&[2, 3]);
    let (x, line) = here!(a.reshape(&[4, 2]));
    assert_failed(&x, "reshape", "float32[2, 3]", line);
    assert!(message(x.error().unwrap()).contains("(4,2)"), "{x}");
    // Two inferred dimensions are ambiguous.
    let (x, line) = here!(a.reshape(&[-1, -1]));
    assert_failed(&x, "reshape", "float32[2, 3]", line);
}

/// `from_slice` with too few or too many values for the shape fails with the slice's dtype
/// and length, and the shape it was asked to fill.
#[test]
fn from_slice_length_mismatch() {
    let (x, line) = here!(Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0], &[2, 3]));
    assert_failed(&x, "from_slice", "float32[5]", line);
    assert!(message(x.error().unwrap()).contains("[2, 3]"), "{x}");
    let (x, line) = here!(Array::from_slice(&[1i64, 2, 3], &[2]));
    assert_failed(&x, "from_slice", "int64[3]", line);
    let (x, line) = here!(Array::from_slice::<u8>(&[], &[-1]));
    assert_failed(&x, "from_slice", "uint8[0]", line);
}

/// Joining arrays whose other axes differ fails, naming every operand.
#[test]
fn concatenate_and_stack_with_mismatched_shapes() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[2, 4]));
    let (x, line) = here!(concatenate(&[&a, &b], 0));
    assert_failed(&x, "concatenate", "float32[2, 3], float32[2, 4]", line);
    let (x, line) = here!(stack(&[&a, &b], 0));
    assert_failed(&x, "stack", "float32[2, 3], float32[2, 4]", line);
    let (x, line) = here!(concatenate(&[&a, &a], 2));
    assert_failed(&x, "concatenate", "float32[2, 3], float32[2, 3]", line);
}

/// `take` along an axis the array lacks, or with float indices, fails.
#[test]
fn take_with_bad_axis_or_indices() {
    let a = f32s(&[3]);
    let idx = Array::from_slice(&[0i32], &[1]);
    let (x, line) = here!(a.take(&idx, 3));
    assert_failed(&x, "take", "float32[3], int32[1]", line);
    let (x, line) = here!(a.take(&idx, &[0, 1]));
    assert_failed(&x, "take", "float32[3], int32[1]", line);
    let float_idx = Array::from_slice(&[0.0f32], &[1]);
    let (x, line) = here!(a.take(&float_idx, 0));
    assert_failed(&x, "take", "float32[3], float32[1]", line);
}

/// A 3-channel input convolved with a 4-channel kernel fails.
#[test]
fn conv2d_with_wrong_channel_count() {
    let x = Array::ones(&[1, 5, 5, 3], Dtype::F32);
    let w = Array::ones(&[2, 3, 3, 4], Dtype::F32);
    let (y, line) = here!(x.conv2d(&w, Conv2d::default()));
    assert_failed(
        &y,
        "conv2d",
        "float32[1, 5, 5, 3], float32[2, 3, 3, 4]",
        line,
    );
}

/// Attention whose queries and keys differ in head dimension fails.
#[test]
fn sdpa_with_mismatched_head_dims() {
    let q = Array::ones(&[1, 2, 4, 8], Dtype::F32);
    let k = Array::ones(&[1, 2, 4, 16], Dtype::F32);
    let (y, line) = here!(sdpa(&q, &k, &k, 1.0, Mask::None));
    let ops = "float32[1, 2, 4, 8], float32[1, 2, 4, 16], float32[1, 2, 4, 16]";
    assert_failed(&y, "scaled_dot_product_attention", ops, line);
}

/// Splitting 5 rows into 2 equal parts is impossible: both parts fail with the error.
#[test]
fn split_into_uneven_sections() {
    let a = f32s(&[5, 2]);
    let (parts, line) = here!(a.split(2, 0));
    assert_eq!(parts.len(), 2);
    for part in &parts {
        assert_failed(part, "split", "float32[5, 2]", line);
    }
    // A split along an axis the array lacks fails the same way.
    let (parts, line) = here!(a.split_at(&[1, 3], 4));
    assert_eq!(parts.len(), 3);
    for part in &parts {
        assert_failed(part, "split_at", "float32[5, 2]", line);
    }
}

// === dtypes ===================================================================================

/// MLX's matmul takes only floating-point operands: bool and integer matrices fail.
#[test]
fn matmul_of_bool_and_integer_arrays() {
    let b = Array::from_slice(&[true, false, true, false], &[2, 2]);
    let (x, line) = here!(b.matmul(&b));
    assert_failed(&x, "matmul", "bool[2, 2], bool[2, 2]", line);
    let i = Array::from_slice(&[1i32, 2, 3, 4], &[2, 2]);
    let (x, line) = here!(i.matmul(&i));
    assert_failed(&x, "matmul", "int32[2, 2], int32[2, 2]", line);
}

/// Quantizing fails, as `Err` straight away, for an integer matrix, a group size that does
/// not divide the last axis, a group size or bit width MLX does not support, a vector,
/// and a mode whose group size is fixed.
#[test]
fn bad_quantization_requests() {
    let ints = Array::ones(&[4, 64], Dtype::I32);
    let w = Array::ones(&[4, 64], Dtype::F32);
    let w48 = Array::ones(&[4, 48], Dtype::F32);
    let w96 = Array::ones(&[4, 96], Dtype::F32);
    let v = Array::ones(&[64], Dtype::F32);
    let affine = QuantMode::Affine;
    let cases = [
        here!(Quantized::new(&ints, 32, 4, affine).map(drop)),
        here!(Quantized::new(&w48, 32, 4, affine).map(drop)),
        here!(Quantized::new(&w, 32, 7, affine).map(drop)),
        here!(Quantized::new(&w, 32, 9, affine).map(drop)),
        here!(Quantized::new(&w96, 48, 4, affine).map(drop)),
        here!(Quantized::new(&v, 32, 4, affine).map(drop)),
        here!(Quantized::new(&w, 64, 8, QuantMode::Mxfp8).map(drop)),
    ];
    let operands = [
        "int32[4, 64]",
        "float32[4, 48]",
        "float32[4, 64]",
        "float32[4, 64]",
        "float32[4, 96]",
        "float32[64]",
        "float32[4, 64]",
    ];
    for ((result, line), operands) in cases.into_iter().zip(operands) {
        let err = result.expect_err(operands);
        assert_op_error(&err, "quantize", operands, line);
    }
}

/// A quantized matmul whose input does not match the packed weights fails.
#[test]
fn quantized_matmul_shape_mismatch() {
    let w = Array::ones(&[8, 64], Dtype::F32);
    let q = Quantized::new(&w, 32, 4, QuantMode::Affine).unwrap();
    let x = Array::ones(&[2, 32], Dtype::F32);
    let (y, line) = here!(q.matmul(&x, true));
    let ops = "float32[2, 32], uint32[8, 8], float32[8, 2], float32[8, 2]";
    assert_failed(&y, "quantized_matmul", ops, line);
}

/// Reading data as a Rust type other than the dtype is `Error::DtypeMismatch` at the
/// reading line; nothing is converted silently.
#[test]
fn reading_with_the_wrong_rust_type() {
    let a = f32s(&[2, 2]);
    let (result, line) = here!(a.to_vec::<i32>());
    match result.unwrap_err() {
        Error::DtypeMismatch {
            op,
            expected,
            found,
            location,
        } => {
            assert_eq!(op, "to_vec");
            assert_eq!((expected, found), (Dtype::I32, Dtype::F32));
            assert_eq!((location.file(), location.line()), (file!(), line));
        }
        other => panic!("expected DtypeMismatch, got {other:?}"),
    }
    let s = Array::scalar(1.5f32);
    let (result, line) = here!(s.item::<f64>());
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            Error::DtypeMismatch {
                op: "item",
                expected: Dtype::F64,
                found: Dtype::F32,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("{}:{line}:", file!())), "{text}");
    assert!(
        text.contains("float32") && text.contains("float64"),
        "{text}"
    );
    // The right type still reads.
    assert_eq!(s.item::<f32>().unwrap(), 1.5);
}

/// `item()` needs exactly one element: four elements or none are errors.
#[test]
fn item_of_a_multi_element_array() {
    let a = f32s(&[2, 2]);
    let (result, line) = here!(a.item::<f32>());
    let err = result.unwrap_err();
    assert_op_error(&err, "item", "float32[2, 2]", line);
    let empty = Array::zeros(&[0], Dtype::F32);
    let (result, line) = here!(empty.item::<f32>());
    assert_op_error(&result.unwrap_err(), "item", "float32[0]", line);
    // A single element of any rank is fine.
    assert_eq!(f32s(&[1, 1, 1]).item::<f32>().unwrap(), 0.0);
}

// === propagation ==============================================================================

/// Everything built on a failed array carries the first error, untouched: same op, same
/// operands, same line, whatever op comes after and whichever operand slot it sits in.
#[test]
fn the_first_error_propagates() {
    let (a, b) = (f32s(&[2, 3]), f32s(&[4, 5]));
    let (bad, line) = here!(a.matmul(&b));
    let first = bad.error().unwrap().to_string();
    let ops = "float32[2, 3], float32[4, 5]";

    let good = f32s(&[2, 3]);
    let idx = Array::from_slice(&[0i32], &[1]);
    let mask = Array::from_slice(&[true], &[1]);
    let downstream = [
        bad.exp(),
        &bad + 1.0,
        1.0 + &bad,
        &good * &bad,
        -&bad,
        bad.sum(ALL, false),
        bad.sum(7, false), // a bad axis too: the first error still wins
        bad.reshape(&[100]),
        bad.softmax(-1),
        bad.argmax(ALL, false),
        bad.matmul(&good),
        good.matmul(&bad),
        bad.astype(Dtype::I32),
        bad.slice_axis(0, 0, 1),
        bad.slice(&[0], &[1], &[]),
        bad.expand_dims(0),
        bad.squeeze(ALL),
        bad.take(&idx, 0),
        good.take(&bad, 0),
        bad.pad(&[(1, 1)], 0.0),
        bad.clip(0.0, 1.0),
        bad.maximum(&good),
        bad.conv2d(&good, Conv2d::default()),
        where_(&mask, &bad, &good),
        where_(&bad, 1.0, 0.0),
        concatenate(&[&good, &bad], 0),
        stack(&[&bad, &good], 0),
        fast::rms_norm(&bad, None, 1e-5),
        fast::rms_norm(&good, Some(&bad), 1e-5),
        sdpa(&good, &bad, &good, 1.0, Mask::Causal),
        mlx::random::normal(&[2], Dtype::F32, &bad),
        bad.exp().log().sum(0, true).reshape(&[-1]) * 3.0,
    ];
    for (i, x) in downstream.iter().enumerate() {
        let err = x
            .error()
            .unwrap_or_else(|| panic!("downstream op {i} did not fail"));
        assert_eq!(err.to_string(), first, "downstream op {i}");
        assert_failed(x, "matmul", ops, line);
    }
    for part in bad.split(3, 0).iter().chain(&bad.split_at(&[1], 0)) {
        assert_failed(part, "matmul", ops, line);
    }
    let err = Quantized::new(&bad, 32, 4, QuantMode::Affine).unwrap_err();
    assert_op_error(&err, "matmul", ops, line);
}

/// `mlx::eval` of a list holding a failed array returns that array's error, even when
/// the other arrays are fine; the fine ones can still be evaluated on their own.
#[test]
fn eval_returns_the_error_of_a_failed_input() {
    let good = f32s(&[2, 2]) * 2.0;
    let (bad, line) = here!(f32s(&[2, 3]).matmul(&f32s(&[2, 3])));
    let downstream = bad.sum(ALL, false);
    let ops = "float32[2, 3], float32[2, 3]";
    assert_op_error(
        &mlx::eval([&good, &downstream]).unwrap_err(),
        "matmul",
        ops,
        line,
    );
    assert_op_error(
        &mlx::eval([&downstream, &good]).unwrap_err(),
        "matmul",
        ops,
        line,
    );
    assert_op_error(
        &mlx::async_eval([&good, &bad]).unwrap_err(),
        "matmul",
        ops,
        line,
    );
    mlx::eval([&good]).unwrap();
    assert_eq!(good.to_vec::<f32>().unwrap(), vec![0.0, 2.0, 4.0, 6.0]);
}

/// `check` is `Ok(self)` and `error` is `None` for a live array; for a failed one they
/// give the carried error. A failed array describes itself as an empty float32 scalar.
#[test]
fn check_and_error() {
    let a = f32s(&[2]);
    assert!(a.error().is_none());
    let checked = a.check().expect("a live array checks");
    assert!(std::ptr::eq(checked, &a));
    let (bad, line) = here!(a.reshape(&[3]));
    let err = bad.check().unwrap_err();
    assert_op_error(&err, "reshape", "float32[2]", line);
    assert_eq!(err.to_string(), bad.error().unwrap().to_string());
    assert_eq!(
        (bad.dtype(), bad.shape(), bad.size()),
        (Dtype::F32, &[][..], 0)
    );
    // A clone of a failed array carries the same error.
    assert_failed(&bad.clone(), "reshape", "float32[2]", line);
}

// === devices ==================================================================================

/// This build of MLX has no GPU: asking for one is a `Runtime` error at the calling line,
/// and the default device is unchanged.
#[test]
fn setting_an_unavailable_device() {
    assert!(
        !Device::Gpu(0).is_available(),
        "this test assumes a CPU-only MLX"
    );
    let before = mlx::default_device().unwrap();
    let (result, line) = here!(mlx::set_default_device(Device::Gpu(0)));
    match result.unwrap_err() {
        Error::Runtime {
            op,
            message,
            location,
        } => {
            assert_eq!(op, "set_default_device");
            assert!(message.contains("Gpu(0)"), "{message}");
            assert_eq!((location.file(), location.line()), (file!(), line));
        }
        other => panic!("expected Error::Runtime, got {other:?}"),
    }
    assert_eq!(mlx::default_device().unwrap(), before);
    assert!(Device::Cpu.is_available());
    mlx::set_default_device(Device::Cpu).unwrap();
}

/// Arguments MLX would divide by unchecked (killing the process) are rejected first.
#[test]
fn zero_divisors_are_errors_not_crashes() {
    let x = Array::zeros(&[1, 4, 4, 2], Dtype::F32);
    let w = Array::zeros(&[2, 3, 3, 2], Dtype::F32);
    let bad_groups = mlx::ops::Conv2d {
        groups: 0,
        ..Default::default()
    };
    assert!(x
        .conv2d(&w, bad_groups)
        .check()
        .unwrap_err()
        .to_string()
        .contains("groups"));
    let bad_stride = mlx::ops::Conv2d {
        stride: (0, 1),
        ..Default::default()
    };
    assert!(x.conv2d(&w, bad_stride).error().is_some());
    let m = Array::zeros(&[4, 64], Dtype::F32);
    assert!(mlx::ops::Quantized::new(&m, 0, 8, mlx::ops::QuantMode::Affine).is_err());
    assert!(mlx::ops::Quantized::new(&m, 32, 0, mlx::ops::QuantMode::Mxfp8).is_err());
    let mut q = mlx::ops::Quantized::new(&m, 32, 8, mlx::ops::QuantMode::Affine).unwrap();
    q.bits = 0;
    assert!(q
        .matmul(&Array::zeros(&[1, 64], Dtype::F32), true)
        .error()
        .is_some());
    assert!(q.dequantize(None).error().is_some());
    let v = Array::zeros(&[8], Dtype::F32);
    assert!(v.slice(&[0], &[8], &[0]).error().is_some());
    assert!(v.slice_update(&v, &[0], &[8], &[0]).error().is_some());
}

#[test]
fn overflowing_shapes_are_errors() {
    let a = Array::from_slice::<f32>(&[], &[1 << 30, 1 << 30, 16]);
    assert!(a
        .check()
        .unwrap_err()
        .to_string()
        .contains("do not fill shape"));
}

#[test]
fn item_checks_the_size_before_reading() {
    let big = Array::zeros(&[1 << 20], Dtype::F32);
    let err = big.item::<f32>().unwrap_err().to_string();
    assert!(err.contains("exactly one element"), "{err}");
}
