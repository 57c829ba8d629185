//! Safetensors files, memory-mapped: tensors are MLX arrays over the mapped file, without
//! a copy, for as long as any of them lives.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::fs::File;
use std::path::Path;
use std::ptr;
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensorError, SafeTensors, TensorInfo, View};

use crate::error::last_error;
use crate::sys;
use crate::{Array, Dtype, Error, Result};

/// The tensors of one safetensors file, by name, and the file's metadata.
#[derive(Debug, Default)]
pub struct Safetensors {
    pub tensors: BTreeMap<String, Array>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads a safetensors file through a memory map.
///
/// Every tensor becomes an evaluated array whose data is the mapped file itself (a
/// tensor whose offset is not aligned to its element size is copied instead). The file
/// must not be modified while its arrays live.
///
/// Errors name the file and, where the problem is one tensor's, the tensor: a truncated
/// or malformed header, offsets that do not match shapes and dtypes, a dtype MLX lacks.
pub fn load_safetensors(path: impl AsRef<Path>) -> Result<Safetensors> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::file(path, None, e))?;
    // SAFETY: the map is read-only and private to this process; MLX never writes to
    // arrays it does not own (they are not donatable). The usual mmap caveat stands: the
    // file must not be truncated by someone else while mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(path, None, e))?;
    parse(path, Arc::new(Backing::Map(map)))
}

/// Reads safetensors data already in memory, as [`load_safetensors`] reads a file: the
/// tensors' arrays share `bytes` (kept alive by them) and errors name `origin`, the file
/// or source the bytes came from.
pub fn load_safetensors_from_bytes(
    origin: impl AsRef<Path>,
    bytes: Vec<u8>,
) -> Result<Safetensors> {
    parse(origin.as_ref(), Arc::new(Backing::Bytes(bytes)))
}

/// What arrays read from safetensors data point into: a mapped file or bytes in memory.
enum Backing {
    Map(Mmap),
    Bytes(Vec<u8>),
}

impl std::ops::Deref for Backing {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Backing::Map(map) => map,
            Backing::Bytes(bytes) => bytes,
        }
    }
}

fn parse(path: &Path, map: Arc<Backing>) -> Result<Safetensors> {
    // One parse validates the header: every tensor's offsets fit its shape and dtype, and
    // together they tile the data exactly.
    let (header_len, header) = SafeTensors::read_metadata(&map[..]).map_err(|e| {
        let tensor = diagnose(&map[..]);
        Error::file(path, tensor.as_deref(), describe_error(&e))
    })?;
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();

    // The data follows the 8-byte header length and the header.
    let data = &map[8 + header_len..];
    let mut tensors = BTreeMap::new();
    for (name, info) in header.tensors() {
        let (begin, end) = info.data_offsets;
        let array = tensor_to_array(&map, info, &data[begin..end])
            .map_err(|message| Error::file(path, Some(&name), message))?;
        tensors.insert(name, array);
    }
    Ok(Safetensors { tensors, metadata })
}

fn describe_error(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            "truncated or not a safetensors file (its header length does not fit the file)".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "the tensor data does not match the file size (truncated or padded file)".into()
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match its data offsets".into()
        }
        other => format!("malformed safetensors file: {other:?}"),
    }
}

/// Finds the first tensor whose header entry is inconsistent, to name it in the error.
fn diagnose(buffer: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(buffer.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(buffer.get(8..8usize.checked_add(n)?)?).ok()?;
    let data_len = (buffer.len() - 8 - n) as u64;
    let mut entries: Vec<(&String, u64, u64, u64)> = Vec::new();
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info.get("data_offsets")?.as_array()?;
        let (begin, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let elements: u64 = info
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64().unwrap_or(u64::MAX))
            .try_fold(1u64, |acc, d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        let bits = match info.get("dtype")?.as_str()? {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
            "I16" | "U16" | "F16" | "BF16" => 16,
            "I32" | "U32" | "F32" => 32,
            "I64" | "U64" | "F64" => 64,
            _ => return Some(name.clone()),
        };
        let bytes = elements.saturating_mul(bits) / 8;
        if end < begin || end - begin != bytes || end > data_len {
            return Some(name.clone());
        }
        entries.push((name, begin, end, bytes));
    }
    entries.sort_by_key(|e| e.1);
    // Offsets must tile the data without gaps or overlaps.
    let mut expected = 0;
    for (name, begin, end, _) in entries {
        if begin != expected {
            return Some(name.clone());
        }
        expected = end;
    }
    None
}

fn dtype_of(dtype: StDtype) -> Result<Dtype, String> {
    Ok(match dtype {
        StDtype::BOOL => Dtype::Bool,
        StDtype::U8 => Dtype::U8,
        StDtype::U16 => Dtype::U16,
        StDtype::U32 => Dtype::U32,
        StDtype::U64 => Dtype::U64,
        StDtype::I8 => Dtype::I8,
        StDtype::I16 => Dtype::I16,
        StDtype::I32 => Dtype::I32,
        StDtype::I64 => Dtype::I64,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::Bf16,
        StDtype::F32 => Dtype::F32,
        StDtype::F64 => Dtype::F64,
        other => {
            return Err(format!(
                "dtype {other:?} has no MLX equivalent (MLX stores FP8 weights packed as uint32 \
                 with scales; convert the checkpoint)"
            ))
        }
    })
}

fn st_dtype_of(dtype: Dtype) -> Result<StDtype, String> {
    Ok(match dtype {
        Dtype::Bool => StDtype::BOOL,
        Dtype::U8 => StDtype::U8,
        Dtype::U16 => StDtype::U16,
        Dtype::U32 => StDtype::U32,
        Dtype::U64 => StDtype::U64,
        Dtype::I8 => StDtype::I8,
        Dtype::I16 => StDtype::I16,
        Dtype::I32 => StDtype::I32,
        Dtype::I64 => StDtype::I64,
        Dtype::F16 => StDtype::F16,
        Dtype::Bf16 => StDtype::BF16,
        Dtype::F32 => StDtype::F32,
        Dtype::F64 => StDtype::F64,
        Dtype::C64 => return Err("complex64 cannot be stored in safetensors".into()),
    })
}

unsafe extern "C" fn release_map(ctx: *mut c_void) {
    // SAFETY: `ctx` came from `Arc::into_raw` in `tensor_to_array`, once per array, and MLX
    // calls this exactly once per array.
    drop(unsafe { Arc::from_raw(ctx.cast_const().cast::<Backing>()) });
}

fn tensor_to_array(map: &Arc<Backing>, info: &TensorInfo, data: &[u8]) -> Result<Array, String> {
    let dtype = dtype_of(info.dtype)?;
    let shape = info
        .shape
        .iter()
        .map(|&d| i32::try_from(d).map_err(|_| format!("dimension {d} exceeds MLX's int32 shapes")))
        .collect::<Result<Vec<i32>, String>>()?;
    let aligned = (data.as_ptr() as usize) % dtype.size() == 0;
    // Bool bytes other than 0 and 1 are undefined behaviour for MLX and for Rust's `bool`:
    // such tensors are copied and normalized.
    let aligned = aligned && dtype != Dtype::Bool;
    let mut out = ptr::null_mut();
    let status = if aligned && !data.is_empty() {
        let ctx = Arc::into_raw(Arc::clone(map)).cast_mut().cast::<c_void>();
        // On a GPU the shim evaluates: it copies the tensor into device memory at once.
        let _evaluating = crate::eval_lock::lock();
        // SAFETY: `data` points into the backing bytes, which `ctx` keeps alive until the shim
        // releases it (once, whether or not the call succeeds); its length matches shape and
        // dtype (checked by the safetensors parser).
        unsafe {
            sys::mlxs_array_from_external(
                data.as_ptr().cast_mut().cast(),
                shape.as_ptr(),
                shape.len(),
                dtype.code(),
                release_map,
                ctx,
                &mut out,
            )
        }
    } else {
        // Copy through a buffer aligned for any element type.
        let mut buffer = vec![0u64; data.len().div_ceil(8)];
        // SAFETY: `buffer` has at least `data.len()` bytes.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), buffer.as_mut_ptr().cast::<u8>(), data.len())
        };
        if dtype == Dtype::Bool {
            // SAFETY: the buffer holds at least `data.len()` initialized bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<u8>(), data.len())
            };
            for b in bytes {
                *b = u8::from(*b != 0);
            }
        }
        // SAFETY: an aligned buffer of shape-and-dtype-sized data, copied by the shim.
        unsafe {
            sys::mlxs_array_from_data(
                buffer.as_ptr().cast(),
                shape.as_ptr(),
                shape.len(),
                dtype.code(),
                &mut out,
            )
        }
    };
    if status != 0 {
        return Err(last_error());
    }
    // SAFETY: on success the shim hands us a new handle we own.
    Ok(unsafe { Array::from_raw(out) })
}

/// One array's bytes, ready for the writer.
struct Bytes {
    dtype: StDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> StDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes arrays (evaluated first) and string metadata to a safetensors file.
///
/// The file is written under a temporary name and renamed into place, so a failure never
/// leaves a partial file at `path` nor destroys what was there.
pub fn save_safetensors<'a, S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (S, &'a Array)>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut prepared = BTreeMap::new();
    for (name, array) in tensors {
        let name = name.as_ref().to_string();
        let fail = |message: String| Error::file(path, Some(&name), message);
        if let Some(error) = array.error() {
            return Err(fail(format!("the array failed: {error}")));
        }
        let dtype = st_dtype_of(array.dtype()).map_err(&fail)?;
        let data = array.to_bytes().map_err(|e| fail(e.to_string()))?;
        let shape = array.shape().iter().map(|&d| d as usize).collect();
        if prepared
            .insert(name.clone(), Bytes { dtype, shape, data })
            .is_some()
        {
            return Err(fail("the same tensor name is given twice".into()));
        }
    }
    let info: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let info = (!info.is_empty()).then_some(info);
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::file(path, None, "not a file path"))?;
    let mut temp_name = file_name.to_os_string();
    // Unique per process and call, so concurrent saves never share a temporary file.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    temp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written =
        safetensors::serialize_to_file(prepared.iter().map(|(k, v)| (k.as_str(), v)), info, &temp)
            .map_err(|e| Error::file(path, None, format!("{e:?}")))
            .and_then(|()| std::fs::rename(&temp, path).map_err(|e| Error::file(path, None, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}
