//! Tensors read from the user's safetensors files (`--inputs`, `--latents`,
//! `--init-latents`, `--cap-feats`): errors name the file and the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use mlx::Array;

use crate::CliResult;

/// Tensor `name` of `tensors` (read from `path`), if there is one: floating point and free
/// of NaN and infinities. Integers are refused rather than cast; NaN would only come out as
/// a black picture.
pub fn float_tensor(
    tensors: &BTreeMap<String, Array>,
    path: &Path,
    name: &str,
) -> CliResult<Option<Array>> {
    let Some(tensor) = tensors.get(name) else {
        return Ok(None);
    };
    if !tensor.dtype().is_float() {
        return Err(format!(
            "{}: `{name}` must be floating point, found {}",
            path.display(),
            tensor.dtype()
        )
        .into());
    }
    if !tensor.all_finite()? {
        return Err(format!("{}: `{name}` holds NaN or infinite values", path.display()).into());
    }
    Ok(Some(tensor.clone()))
}

/// [`float_tensor`], which the file must have.
pub fn required_float(
    tensors: &BTreeMap<String, Array>,
    path: &Path,
    name: &str,
) -> CliResult<Array> {
    float_tensor(tensors, path, name)?
        .ok_or_else(|| format!("{}: no tensor `{name}`", path.display()).into())
}
