//! Safetensors files and sharded checkpoints: exact round trips of every dtype, quantized
//! weights, memory-mapped arrays outliving their loader, hostile files rejected with an
//! `Error::File` that names the file (and the tensor, when one tensor is at fault), and the
//! consistency checks between a checkpoint index and its shards.
//!
//! Hostile files are built by hand in the safetensors layout: an 8-byte little-endian
//! header length, a JSON header, then the tensor data.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use mlx::io::{load_checkpoint, load_safetensors, save_checkpoint, save_safetensors, Checkpoint};
use mlx::ops::{QuantMode, Quantized};
use mlx::{random, Array, Dtype, Element, Error};
use serde_json::{json, Value};
use tempfile::TempDir;

// === helpers ==================================================================================

/// A fresh temporary directory (removed when dropped).
fn tempdir() -> TempDir {
    tempfile::tempdir().expect("creating a temporary directory")
}

/// Element types compared bit for bit (so NaN payloads and -0.0 count).
trait Exact: Element + Debug {
    fn bits(self) -> u64;
}

macro_rules! exact_int {
    ($($t:ty),*) => {$(
        impl Exact for $t {
            fn bits(self) -> u64 {
                self as u64
            }
        }
    )*};
}
exact_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Exact for bool {
    fn bits(self) -> u64 {
        u64::from(self)
    }
}

macro_rules! exact_float {
    ($($t:ty),*) => {$(
        impl Exact for $t {
            fn bits(self) -> u64 {
                u64::from(self.to_bits())
            }
        }
    )*};
}
exact_float!(f16, bf16, f32, f64);

/// `a` has `T`'s dtype, `shape`, and exactly `expected` as elements.
#[track_caller]
fn assert_exact<T: Exact>(a: &Array, expected: &[T], shape: &[i32]) {
    assert_eq!(a.dtype(), T::DTYPE);
    assert_eq!(a.shape(), shape);
    let got = a.to_vec::<T>().expect("reading the array");
    let bits = |v: &[T]| v.iter().map(|x| x.bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(expected), "{got:?} != {expected:?}");
}

/// A tensor to save, and the check its reloaded copy must pass.
struct Case {
    name: &'static str,
    array: Array,
    check: Box<dyn Fn(&Array)>,
}

fn case<T: Exact>(name: &'static str, values: &[T], shape: &[i32]) -> Case {
    let (values, shape_owned) = (values.to_vec(), shape.to_vec());
    Case {
        name,
        array: Array::from_slice(&values, shape),
        check: Box::new(move |a: &Array| assert_exact(a, &values, &shape_owned)),
    }
}

/// The safetensors bytes of `header` (serialized as JSON, padded with spaces to a multiple
/// of 8 bytes as safetensors writers do, so the data starts 8-byte aligned) and `data`.
fn safetensors_bytes(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut header = serde_json::to_vec(header).unwrap();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(data);
    bytes
}

/// Writes `bytes` to `dir/name` and returns the path.
fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The header JSON of a safetensors file, read with serde_json alone.
fn read_header(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

/// `result` is an `Error::File` about `path` and, if given, `tensor`; its Display string
/// names both. Returns the message.
#[track_caller]
fn assert_file_error<T: Debug>(
    result: mlx::Result<T>,
    path: &Path,
    tensor: Option<&str>,
) -> String {
    let err = result.expect_err("expected an error");
    let text = err.to_string();
    let Error::File {
        path: got_path,
        tensor: got_tensor,
        message,
    } = &err
    else {
        panic!("expected Error::File, got {err:?}");
    };
    assert_eq!(got_path, path, "{text}");
    assert_eq!(got_tensor.as_deref(), tensor, "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    if let Some(tensor) = tensor {
        assert!(text.contains(&format!("`{tensor}`")), "{text}");
    }
    assert!(!message.is_empty());
    message.clone()
}

/// Saves `tensors` (no metadata) to `dir/name`.
fn save(dir: &Path, name: &str, tensors: &[(&str, &Array)]) -> PathBuf {
    let path = dir.join(name);
    save_safetensors(&path, tensors.iter().copied(), &BTreeMap::new()).unwrap();
    path
}

/// A small float32 array whose values tell which tensor it is.
fn tagged(tag: f32, shape: &[i32]) -> Array {
    let n: i32 = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|i| tag * 100.0 + i as f32).collect();
    Array::from_slice(&data, shape)
}

// === round trips ==============================================================================

/// Every dtype survives a save and load bit for bit, with its shape, including extreme
/// values, a 0-d scalar and empty tensors; the metadata comes back too, and the file's
/// header uses the standard safetensors dtype names.
#[test]
fn every_dtype_round_trips_exactly() {
    let cases = vec![
        case("bool", &[true, false, true, true, false, false], &[2, 3]),
        case("u8", &[0u8, 1, 127, 128, 255], &[5]),
        case("u16", &[0u16, 1, 0x8000, u16::MAX], &[2, 2]),
        case("u32", &[0u32, 1, 0xdead_beef, u32::MAX], &[4, 1]),
        case("u64", &[0u64, 1, 1 << 53, u64::MAX], &[1, 4]),
        case("i8", &[i8::MIN, -1, 0, 1, i8::MAX], &[5]),
        case("i16", &[i16::MIN, -1, 0, i16::MAX], &[2, 1, 2]),
        case("i32", &[i32::MIN, -7, 0, 7, i32::MAX, 42], &[3, 2]),
        case("i64", &[i64::MIN, -1, 0, (1 << 53) + 1, i64::MAX], &[5]),
        case(
            "f16",
            &[
                f16::ZERO,
                f16::NEG_ZERO,
                f16::from_f32(1.5),
                f16::MAX,
                f16::MIN_POSITIVE_SUBNORMAL,
                f16::INFINITY,
                f16::NEG_INFINITY,
                f16::NAN,
            ],
            &[2, 4],
        ),
        case(
            "bf16",
            &[
                bf16::ZERO,
                bf16::NEG_ZERO,
                bf16::from_f32(-3.25),
                bf16::MAX,
                bf16::MIN_POSITIVE_SUBNORMAL,
                bf16::INFINITY,
                bf16::NAN,
                bf16::from_bits(0x7fc1), // a NaN with a payload
            ],
            &[8],
        ),
        case(
            "f32",
            &[
                0.0f32,
                -0.0,
                std::f32::consts::PI,
                f32::MAX,
                f32::MIN_POSITIVE,
                1e-45,
                f32::NEG_INFINITY,
                f32::from_bits(0x7fc0_1234),
            ],
            &[2, 2, 2],
        ),
        case(
            "f64",
            &[0.0f64, -0.0, 1.0 / 3.0, f64::MAX, 5e-324, f64::INFINITY],
            &[3, 2],
        ),
        case("scalar_f32", &[2.5f32], &[]),
        case("scalar_i64", &[-9i64], &[]),
        case::<f32>("empty_f32", &[], &[0]),
        case::<i16>("empty_i16", &[], &[2, 0, 3]),
        case::<bf16>("empty_bf16", &[], &[0, 4]),
    ];
    let metadata: BTreeMap<String, String> = [
        ("format", "mlx"),
        ("note", "ünïcödé ✓ and \"quotes\""),
        ("empty", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    let dir = tempdir();
    let path = dir.path().join("all.safetensors");
    save_safetensors(&path, cases.iter().map(|c| (c.name, &c.array)), &metadata).unwrap();

    let loaded = load_safetensors(&path).unwrap();
    assert_eq!(loaded.metadata, metadata);
    let names: Vec<&str> = loaded.tensors.keys().map(String::as_str).collect();
    let mut expected_names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    expected_names.sort();
    assert_eq!(names, expected_names);
    for c in &cases {
        let array = &loaded.tensors[c.name];
        assert!(array.is_evaluated(), "{} is not evaluated on load", c.name);
        (c.check)(array);
    }

    // Another reader would see the standard dtype names and shapes.
    let header = read_header(&path);
    for (name, dtype) in [
        ("bool", "BOOL"),
        ("u8", "U8"),
        ("u16", "U16"),
        ("u32", "U32"),
        ("u64", "U64"),
        ("i8", "I8"),
        ("i16", "I16"),
        ("i32", "I32"),
        ("i64", "I64"),
        ("f16", "F16"),
        ("bf16", "BF16"),
        ("f32", "F32"),
        ("f64", "F64"),
    ] {
        assert_eq!(header[name]["dtype"], dtype, "{name}");
    }
    assert_eq!(header["scalar_f32"]["shape"], json!([]));
    assert_eq!(header["empty_i16"]["shape"], json!([2, 0, 3]));
    assert_eq!(header["__metadata__"]["format"], "mlx");
}

/// Lazy arrays are evaluated before saving, and strided views are saved in logical
/// (row-major) order.
#[test]
fn computed_and_transposed_arrays_are_saved_by_value() {
    let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let lazy = &a * 10.0;
    let transposed = a.t();
    let dir = tempdir();
    let path = save(
        dir.path(),
        "computed.safetensors",
        &[("lazy", &lazy), ("t", &transposed)],
    );
    let loaded = load_safetensors(&path).unwrap();
    assert_exact(
        &loaded.tensors["lazy"],
        &[10.0f32, 20.0, 30.0, 40.0, 50.0, 60.0],
        &[2, 3],
    );
    assert_exact(
        &loaded.tensors["t"],
        &[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0],
        &[3, 2],
    );
}

/// Packed 8-bit affine weights (uint32), their scales and biases, saved and reloaded,
/// dequantize and multiply exactly as before.
#[test]
fn quantized_weights_round_trip() {
    let w = random::normal(&[64, 128], Dtype::F32, &random::key(7));
    let q = Quantized::new(&w, 32, 8, QuantMode::Affine).unwrap();
    assert_eq!(q.weights.dtype(), Dtype::U32);
    assert_eq!(q.weights.shape(), &[64, 128 * 8 / 32]);
    let biases = q.biases.as_ref().expect("affine mode has biases");

    let dir = tempdir();
    let path = save(
        dir.path(),
        "q.safetensors",
        &[
            ("w.weight", &q.weights),
            ("w.scales", &q.scales),
            ("w.biases", biases),
        ],
    );
    let mut loaded = load_safetensors(&path).unwrap();
    let reloaded = Quantized {
        weights: loaded.tensors.remove("w.weight").unwrap(),
        scales: loaded.tensors.remove("w.scales").unwrap(),
        biases: loaded.tensors.remove("w.biases"),
        group_size: 32,
        bits: 8,
        mode: QuantMode::Affine,
    };
    assert_eq!(
        reloaded.weights.to_vec::<u32>().unwrap(),
        q.weights.to_vec::<u32>().unwrap()
    );

    let before = q.dequantize(None).to_vec::<f32>().unwrap();
    let after = reloaded.dequantize(None);
    assert_eq!(after.shape(), &[64, 128]);
    assert_exact(&after, &before, &[64, 128]);
    // And the dequantized matrix is close to the original: 8 bits over a group's range
    // (|w| < ~4.5 for 8192 normal samples) errs by at most range / 255 / 2 < 0.02.
    let err = (&after - &w)
        .abs()
        .max(mlx::ALL, false)
        .item::<f32>()
        .unwrap();
    assert!(err < 0.02, "max dequantization error {err}");

    let x = random::normal(&[3, 128], Dtype::F32, &random::key(8));
    let y_before = q.matmul(&x, true).to_vec::<f32>().unwrap();
    assert_exact(&reloaded.matmul(&x, true), &y_before, &[3, 64]);
}

/// Loaded arrays map the file; they stay valid after the `Safetensors` value is dropped
/// and even after the file is deleted, and compute like any other array.
#[test]
fn loaded_arrays_outlive_the_loader_and_the_file() {
    let dir = tempdir();
    let values: Vec<f32> = (0..4096).map(|i| i as f32 * 0.5).collect();
    let big = Array::from_slice(&values, &[64, 64]);
    let small = Array::from_slice(&[7i64, 8, 9], &[3]);
    let path = save(
        dir.path(),
        "keep.safetensors",
        &[("big", &big), ("small", &small)],
    );

    let (big_loaded, small_loaded) = {
        let mut file = load_safetensors(&path).unwrap();
        let big = file.tensors.remove("big").unwrap();
        let small = file.tensors["small"].clone();
        (big, small)
    }; // the Safetensors value (and its other handles) dropped here
    let second = load_safetensors(&path).unwrap().tensors["big"].clone();
    drop(dir); // the file itself is gone

    assert_exact(&big_loaded, &values, &[64, 64]);
    assert_exact(&small_loaded, &[7i64, 8, 9], &[3]);
    let total = (&big_loaded + &second)
        .sum(mlx::ALL, false)
        .item::<f32>()
        .unwrap();
    let expected: f32 = values.iter().sum::<f32>() * 2.0;
    assert_eq!(total, expected);
    // A clone made now still reads after the original handle goes.
    let clone = big_loaded.clone();
    drop(big_loaded);
    assert_exact(&clone, &values, &[64, 64]);
}

/// A tensor whose data offset is not a multiple of its element size is copied instead of
/// mapped, and reads correctly.
#[test]
fn unaligned_tensor_reads_correctly() {
    let dir = tempdir();
    let mut data = vec![0xabu8];
    for x in [1.5f32, -2.0, 3.25] {
        data.extend_from_slice(&x.to_le_bytes());
    }
    let header = json!({
        "pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "x": {"dtype": "F32", "shape": [3], "data_offsets": [1, 13]},
    });
    let bytes = safetensors_bytes(&header, &data);
    // The data starts 8-byte aligned, so `x` starts at an odd file offset.
    assert_eq!((bytes.len() - data.len()) % 8, 0);
    let path = write_file(dir.path(), "unaligned.safetensors", &bytes);
    let loaded = load_safetensors(&path).unwrap();
    assert_exact(&loaded.tensors["pad"], &[0xabu8], &[1]);
    assert_exact(&loaded.tensors["x"], &[1.5f32, -2.0, 3.25], &[3]);
}

// === saving failures ==========================================================================

/// Saving a failed array is an error naming the file and tensor, and the file that was
/// there before is left intact (no partial write, no temporary file left behind).
#[test]
fn failed_save_leaves_the_old_file_intact() {
    let dir = tempdir();
    let old = tagged(1.0, &[2, 2]);
    let path = save(dir.path(), "model.safetensors", &[("w", &old)]);
    let before = std::fs::read(&path).unwrap();

    let bad = Array::zeros(&[2, 3], Dtype::F32).matmul(&Array::zeros(&[4, 5], Dtype::F32));
    let good = tagged(2.0, &[3]);
    let result = save_safetensors(&path, [("a", &good), ("w", &bad)], &BTreeMap::new());
    let message = assert_file_error(result, &path, Some("w"));
    assert!(
        message.contains("matmul(float32[2, 3], float32[4, 5])"),
        "{message}"
    );

    assert_eq!(std::fs::read(&path).unwrap(), before);
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "a temporary file was left behind");
    let loaded = load_safetensors(&path).unwrap();
    assert_exact(
        &loaded.tensors["w"],
        &[100.0f32, 101.0, 102.0, 103.0],
        &[2, 2],
    );
}

/// Complex arrays have no safetensors dtype, a name given twice is ambiguous, and a
/// directory that does not exist cannot be written: all errors naming the file.
#[test]
fn unsavable_requests_are_errors() {
    let dir = tempdir();
    let path = dir.path().join("x.safetensors");
    let complex = Array::scalar(1.0f32).astype(Dtype::C64);
    let result = save_safetensors(&path, [("z", &complex)], &BTreeMap::new());
    assert_file_error(result, &path, Some("z"));

    let a = tagged(1.0, &[2]);
    let result = save_safetensors(&path, [("a", &a), ("a", &a)], &BTreeMap::new());
    assert_file_error(result, &path, Some("a"));
    assert!(!path.exists());

    let nowhere = dir.path().join("missing-dir").join("x.safetensors");
    let result = save_safetensors(&nowhere, [("a", &a)], &BTreeMap::new());
    assert_file_error(result, &nowhere, None);
}

// === hostile files ============================================================================

/// A valid file of two float32 tensors: `a` (`[2]`, bytes 0..8) and `b` (`[3]`, 8..20).
fn two_tensor_file() -> Vec<u8> {
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]},
    });
    let data: Vec<u8> = (0..5).flat_map(|i| (i as f32).to_le_bytes()).collect();
    safetensors_bytes(&header, &data)
}

/// The hand-built reference file itself is fine, so the failures below are due to the
/// damage done to it.
#[test]
fn hand_built_file_loads() {
    let dir = tempdir();
    let path = write_file(dir.path(), "ok.safetensors", &two_tensor_file());
    let loaded = load_safetensors(&path).unwrap();
    assert_exact(&loaded.tensors["a"], &[0.0f32, 1.0], &[2]);
    assert_exact(&loaded.tensors["b"], &[2.0f32, 3.0, 4.0], &[3]);
}

/// Bytes in memory read as the same file does, and their errors name the origin given.
#[test]
fn bytes_read_as_the_file_does() {
    let origin = Path::new("in-memory.safetensors");
    let loaded = mlx::io::load_safetensors_from_bytes(origin, two_tensor_file()).unwrap();
    assert_exact(&loaded.tensors["a"], &[0.0f32, 1.0], &[2]);
    assert_exact(&loaded.tensors["b"], &[2.0f32, 3.0, 4.0], &[3]);
    let mut cut = two_tensor_file();
    cut.truncate(cut.len() - 6);
    let result = mlx::io::load_safetensors_from_bytes(origin, cut);
    assert_file_error(result, origin, Some("b"));
}

/// Empty, cut short, or with a header length past the end: errors naming the file.
#[test]
fn empty_and_truncated_files() {
    let dir = tempdir();
    let good = two_tensor_file();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    let path = write_file(dir.path(), "empty.safetensors", b"");
    assert_file_error(load_safetensors(&path), &path, None);

    let path = write_file(dir.path(), "short.safetensors", &good[..5]);
    assert_file_error(load_safetensors(&path), &path, None);

    let cut = &good[..8 + header_len / 2];
    let path = write_file(dir.path(), "cut-header.safetensors", cut);
    assert_file_error(load_safetensors(&path), &path, None);

    // Cut in the data: `b`, the tensor at the end, is the one that lost bytes.
    let path = write_file(dir.path(), "cut-data.safetensors", &good[..good.len() - 6]);
    assert_file_error(load_safetensors(&path), &path, Some("b"));

    // Extra bytes after the data are as wrong as missing ones.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 4]);
    let path = write_file(dir.path(), "padded.safetensors", &padded);
    assert_file_error(load_safetensors(&path), &path, None);

    for claimed in [good.len() as u64, 1 << 40, u64::MAX] {
        let mut bytes = good.clone();
        bytes[..8].copy_from_slice(&claimed.to_le_bytes());
        let path = write_file(dir.path(), &format!("long-{claimed}.safetensors"), &bytes);
        assert_file_error(load_safetensors(&path), &path, None);
    }
}

/// A header that is not JSON, or JSON that is not a safetensors header, is an error
/// naming the file; an unknown dtype name names its tensor too.
#[test]
fn non_json_header() {
    let dir = tempdir();
    let cases: [&[u8]; 4] = [
        b"this is not json",
        b"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_off",
        b"[1, 2, 3]",
        b"\xff\xfe{}",
    ];
    for (i, header) in cases.into_iter().enumerate() {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let path = write_file(dir.path(), &format!("bad-{i}.safetensors"), &bytes);
        assert_file_error(load_safetensors(&path), &path, None);
    }
    // A dtype name safetensors does not know: the tensor is named.
    let header = json!({"a": {"dtype": "F7", "shape": [1], "data_offsets": [0, 1]}});
    let path = write_file(
        dir.path(),
        "f7.safetensors",
        &safetensors_bytes(&header, &[0]),
    );
    assert_file_error(load_safetensors(&path), &path, Some("a"));
}

/// Offsets that do not span shape × dtype size name the tensor at fault.
#[test]
fn offsets_that_do_not_match_the_shape() {
    let dir = tempdir();
    // `w` claims 2x2 float32 (16 bytes) over 12 bytes.
    let header = json!({
        "ok": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [4, 16]},
    });
    let path = write_file(
        dir.path(),
        "size.safetensors",
        &safetensors_bytes(&header, &[0; 16]),
    );
    assert_file_error(load_safetensors(&path), &path, Some("w"));

    // Reversed offsets.
    let header = json!({"r": {"dtype": "U8", "shape": [4], "data_offsets": [4, 0]}});
    let path = write_file(
        dir.path(),
        "reversed.safetensors",
        &safetensors_bytes(&header, &[0; 4]),
    );
    assert_file_error(load_safetensors(&path), &path, Some("r"));
}

/// Two tensors sharing bytes, or a gap between tensors, name the tensor that starts in
/// the wrong place.
#[test]
fn overlapping_offsets() {
    let dir = tempdir();
    let header = json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    });
    let path = write_file(
        dir.path(),
        "overlap.safetensors",
        &safetensors_bytes(&header, &[0; 12]),
    );
    assert_file_error(load_safetensors(&path), &path, Some("b"));

    let header = json!({
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "c": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    });
    let path = write_file(
        dir.path(),
        "gap.safetensors",
        &safetensors_bytes(&header, &[0; 12]),
    );
    assert_file_error(load_safetensors(&path), &path, Some("c"));
}

/// FP8 tensors are valid safetensors but have no MLX dtype: the error names the tensor
/// and the dtype.
#[test]
fn fp8_tensor_is_unsupported() {
    let dir = tempdir();
    let header = json!({
        "fine": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
        "fp8": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [4, 8]},
    });
    let path = write_file(
        dir.path(),
        "fp8.safetensors",
        &safetensors_bytes(&header, &[0; 8]),
    );
    let message = assert_file_error(load_safetensors(&path), &path, Some("fp8"));
    assert!(message.contains("F8_E4M3"), "{message}");
}

/// A path that does not exist is an error naming it.
#[test]
fn nonexistent_path() {
    let dir = tempdir();
    let path = dir.path().join("nope.safetensors");
    assert_file_error(load_safetensors(&path), &path, None);
    assert_file_error(load_checkpoint(&path), &path, None);
}

// === sharded checkpoints ======================================================================

/// Writes `model.safetensors.index.json` mapping tensor names to shard files.
fn write_index(dir: &Path, weight_map: &[(&str, &str)]) -> PathBuf {
    let map: serde_json::Map<String, Value> = weight_map
        .iter()
        .map(|(t, f)| (t.to_string(), json!(f)))
        .collect();
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    write_file(
        dir,
        "model.safetensors.index.json",
        &serde_json::to_vec_pretty(&index).unwrap(),
    )
}

const SHARD1: &str = "model-00001-of-00002.safetensors";
const SHARD2: &str = "model-00002-of-00002.safetensors";

/// Two shards: `a` and `b` in the first, `c` in the second.
fn write_shards(dir: &Path) -> (PathBuf, PathBuf) {
    let s1 = save(
        dir,
        SHARD1,
        &[("a", &tagged(1.0, &[2])), ("b", &tagged(2.0, &[2, 2]))],
    );
    let s2 = save(dir, SHARD2, &[("c", &tagged(3.0, &[3]))]);
    (s1, s2)
}

/// Every tensor of `checkpoint` has its tagged values and comes from `files[name]`.
#[track_caller]
fn assert_checkpoint(checkpoint: &Checkpoint, files: &[(&str, &Path, f32, &[i32])]) {
    assert_eq!(checkpoint.len(), files.len());
    assert!(!checkpoint.is_empty());
    let names: Vec<&str> = checkpoint.names().collect();
    let expected: Vec<&str> = files.iter().map(|f| f.0).collect();
    assert_eq!(names, expected);
    for &(name, file, tag, shape) in files {
        assert_eq!(checkpoint.file_of(name), Some(file), "{name}");
        let values: Vec<f32> = tagged(tag, shape).to_vec().unwrap();
        assert_exact(checkpoint.get(name).unwrap(), &values, shape);
    }
    assert_eq!(checkpoint.file_of("missing"), None);
    assert!(checkpoint.get("missing").is_none());
}

/// An index and two shards load as one checkpoint, through the directory or the index
/// path, and each tensor knows its file.
#[test]
fn sharded_checkpoint_loads() {
    let dir = tempdir();
    let (s1, s2) = write_shards(dir.path());
    let index = write_index(dir.path(), &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2)]);
    let expected: [(&str, &Path, f32, &[i32]); 3] = [
        ("a", &s1, 1.0, &[2]),
        ("b", &s1, 2.0, &[2, 2]),
        ("c", &s2, 3.0, &[3]),
    ];
    for source in [dir.path(), index.as_path()] {
        let checkpoint = load_checkpoint(source).unwrap();
        assert_checkpoint(&checkpoint, &expected);
        assert_eq!(checkpoint.files(), &[s1.clone(), s2.clone()]);
        assert_eq!(checkpoint.iter().count(), 3);
    }
    let mut checkpoint = load_checkpoint(dir.path()).unwrap();
    let a = checkpoint.take("a").unwrap();
    assert_exact(&a, &[100.0f32, 101.0], &[2]);
    assert!(checkpoint.take("a").is_none());
    assert_eq!(checkpoint.len(), 2);
}

/// A tensor the index puts in a shard that lacks it: the error names shard and tensor.
#[test]
fn index_lists_a_tensor_the_shard_lacks() {
    let dir = tempdir();
    let (_, s2) = write_shards(dir.path());
    write_index(
        dir.path(),
        &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2), ("d", SHARD2)],
    );
    assert_file_error(load_checkpoint(dir.path()), &s2, Some("d"));
}

/// A tensor in a shard that the index does not list: the error names shard and tensor.
#[test]
fn shard_holds_a_tensor_the_index_does_not_list() {
    let dir = tempdir();
    let (s1, _) = write_shards(dir.path());
    write_index(dir.path(), &[("a", SHARD1), ("c", SHARD2)]);
    assert_file_error(load_checkpoint(dir.path()), &s1, Some("b"));
}

/// The same tensor in two shards is an error naming the shard the index did not pick.
#[test]
fn tensor_in_two_shards() {
    let dir = tempdir();
    save(dir.path(), SHARD1, &[("a", &tagged(1.0, &[2]))]);
    let s2 = save(
        dir.path(),
        SHARD2,
        &[("a", &tagged(1.0, &[2])), ("c", &tagged(3.0, &[1]))],
    );
    write_index(dir.path(), &[("a", SHARD1), ("c", SHARD2)]);
    let message = assert_file_error(load_checkpoint(dir.path()), &s2, Some("a"));
    assert!(message.contains(SHARD1), "{message}");
}

/// An index naming a shard file that is not there: the error names that file.
#[test]
fn index_refers_to_a_missing_shard() {
    let dir = tempdir();
    write_shards(dir.path());
    let missing = "model-00003-of-00003.safetensors";
    write_index(
        dir.path(),
        &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2), ("z", missing)],
    );
    assert_file_error(load_checkpoint(dir.path()), &dir.path().join(missing), None);
}

/// Shard names must be plain file names next to the index.
#[test]
fn index_refers_outside_its_directory() {
    let dir = tempdir();
    write_shards(dir.path());
    let index = write_index(dir.path(), &[("a", "../elsewhere.safetensors")]);
    assert_file_error(load_checkpoint(dir.path()), &index, Some("a"));
}

/// An index that is not JSON, or lacks `weight_map`, names the index file.
#[test]
fn malformed_index() {
    let dir = tempdir();
    write_shards(dir.path());
    let index = write_file(
        dir.path(),
        "model.safetensors.index.json",
        b"{\"metadata\": {}}",
    );
    assert_file_error(load_checkpoint(dir.path()), &index, None);
    let index = write_file(dir.path(), "model.safetensors.index.json", b"not json");
    assert_file_error(load_checkpoint(&index), &index, None);
}

/// Several shards and no index: which tensor is where is unknown, an error naming the
/// directory. An empty directory is an error too.
#[test]
fn several_shards_without_an_index() {
    let dir = tempdir();
    write_shards(dir.path());
    let message = assert_file_error(load_checkpoint(dir.path()), dir.path(), None);
    assert!(message.contains('2'), "{message}");

    let empty = tempdir();
    assert_file_error(load_checkpoint(empty.path()), empty.path(), None);
}

/// A directory with one safetensors file (and other files) loads that file.
#[test]
fn single_file_directory_loads() {
    let dir = tempdir();
    let path = save(
        dir.path(),
        "model.safetensors",
        &[("x", &tagged(5.0, &[2, 3]))],
    );
    write_file(dir.path(), "config.json", b"{}");
    let checkpoint = load_checkpoint(dir.path()).unwrap();
    assert_checkpoint(&checkpoint, &[("x", &path, 5.0, &[2, 3])]);
    assert_eq!(checkpoint.files(), std::slice::from_ref(&path));
    // The file path itself works the same.
    let checkpoint = load_checkpoint(&path).unwrap();
    assert_checkpoint(&checkpoint, &[("x", &path, 5.0, &[2, 3])]);
}

/// A hostile shard fails the whole checkpoint with the shard's own error.
#[test]
fn hostile_shard_fails_the_checkpoint() {
    let dir = tempdir();
    let (_, s2) = write_shards(dir.path());
    let bytes = std::fs::read(&s2).unwrap();
    std::fs::write(&s2, &bytes[..bytes.len() - 2]).unwrap();
    write_index(dir.path(), &[("a", SHARD1), ("b", SHARD1), ("c", SHARD2)]);
    assert_file_error(load_checkpoint(dir.path()), &s2, Some("c"));
}

/// A BOOL tensor whose bytes are not 0 or 1 reads as proper bools.
#[test]
fn bool_bytes_are_normalized_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bools.safetensors");
    let header = br#"{"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[2, 0, 255]);
    std::fs::write(&path, file).unwrap();
    let loaded = mlx::io::load_safetensors(&path).unwrap();
    let values = loaded.tensors["b"].to_vec::<bool>().unwrap();
    assert_eq!(values, vec![true, false, true]);
    let negated: Vec<bool> = values.iter().map(|v| !v).collect();
    assert_eq!(
        negated,
        vec![false, true, false],
        "normalized bools negate properly"
    );
    let count = loaded.tensors["b"]
        .astype(Dtype::I32)
        .sum(mlx::ALL, false)
        .item::<i32>()
        .unwrap();
    assert_eq!(count, 2);
}

#[test]
fn checkpoints_are_written_in_their_dtype_but_for_fp8_scales() {
    let dir = tempdir();
    let f32s = |shape: &[i32]| Array::ones(shape, Dtype::F32);
    let (packed, bytes) = (
        Array::zeros(&[4, 1], Dtype::U32),
        Array::zeros(&[4, 16], Dtype::U8),
    );
    let (dense, scales, fp8_scales) = (f32s(&[4, 16]), f32s(&[4, 1]), f32s(&[4]));
    save_checkpoint(
        dir.path(),
        "model.safetensors",
        [
            ("dense.weight", &dense),
            // An MLX format: packed words, scales in the weights' dtype.
            ("affine.weight", &packed),
            ("affine.weight_scale", &scales),
            ("affine.weight_qbias", &scales),
            // fp8: byte weights, float32 scales whatever the weights' dtype.
            ("fp8.weight", &bytes),
            ("fp8.weight_scale", &fp8_scales),
        ],
        Dtype::Bf16,
        "{}",
    )
    .unwrap();
    let file = load_safetensors(dir.path().join("model.safetensors")).unwrap();
    let dtype = |name: &str| file.tensors[name].dtype();
    for (name, expected) in [
        ("dense.weight", Dtype::Bf16),
        ("affine.weight", Dtype::U32),
        ("affine.weight_scale", Dtype::Bf16),
        ("affine.weight_qbias", Dtype::Bf16),
        ("fp8.weight", Dtype::U8),
        ("fp8.weight_scale", Dtype::F32),
    ] {
        assert_eq!(dtype(name), expected, "{name}");
    }
}
