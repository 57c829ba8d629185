//! Raw declarations of the C shim (`cpp/shim.h`). Everything here is `unsafe` and
//! handle-based; the safe API lives in the rest of the crate.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

#[repr(C)]
pub struct mlxs_array {
    _private: [u8; 0],
}

#[repr(C)]
pub struct mlxs_vec {
    _private: [u8; 0],
}

#[repr(C)]
pub struct mlxs_closure {
    _private: [u8; 0],
}

pub type TraceFn = unsafe extern "C" fn(*mut c_void, *const mlxs_vec, *mut mlxs_vec) -> c_int;

/// Op codes of `mlxs_unary` (enum `mlxs_unary_op` in the header, same order).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unary {
    Negative,
    Exp,
    Log,
    Log1p,
    Sqrt,
    Rsqrt,
    Square,
    Abs,
    Sign,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Erf,
    Floor,
    Ceil,
    Round,
    Reciprocal,
    LogicalNot,
    StopGradient,
    Contiguous,
    IsFinite,
}

/// Op codes of `mlxs_binary` (enum `mlxs_binary_op`, same order).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Add,
    Subtract,
    Multiply,
    Divide,
    Remainder,
    Power,
    Maximum,
    Minimum,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    LogicalAnd,
    LogicalOr,
    Matmul,
}

/// Op codes of `mlxs_reduce` (enum `mlxs_reduce_op`, same order).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    Logsumexp,
    All,
    Any,
}

pub type Release = unsafe extern "C" fn(*mut c_void);

extern "C" {
    pub fn mlxs_last_error(len: *mut usize) -> *const c_char;
    // Only the test that checks the op-code enums against the shim needs these.
    #[cfg(test)]
    pub fn mlxs_unary_name(op: c_int) -> *const c_char;
    #[cfg(test)]
    pub fn mlxs_binary_name(op: c_int) -> *const c_char;
    #[cfg(test)]
    pub fn mlxs_reduce_name(op: c_int) -> *const c_char;

    pub fn mlxs_array_free(a: *mut mlxs_array);
    pub fn mlxs_array_clone(a: *const mlxs_array) -> *mut mlxs_array;
    pub fn mlxs_array_dtype(a: *const mlxs_array) -> c_int;
    pub fn mlxs_array_ndim(a: *const mlxs_array) -> usize;
    pub fn mlxs_array_shape(a: *const mlxs_array) -> *const i32;
    pub fn mlxs_array_size(a: *const mlxs_array) -> usize;
    pub fn mlxs_array_nbytes(a: *const mlxs_array) -> usize;
    pub fn mlxs_array_is_evaluated(a: *const mlxs_array) -> c_int;
    pub fn mlxs_array_read(a: *const mlxs_array, dst: *mut c_void, nbytes: usize) -> c_int;
    pub fn mlxs_array_to_string(
        a: *const mlxs_array,
        s: *mut *const c_char,
        len: *mut usize,
    ) -> c_int;

    pub fn mlxs_array_from_data(
        data: *const c_void,
        shape: *const i32,
        ndim: usize,
        dtype: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_array_from_external(
        data: *mut c_void,
        shape: *const i32,
        ndim: usize,
        dtype: c_int,
        release: Release,
        ctx: *mut c_void,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_full(
        shape: *const i32,
        ndim: usize,
        value: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_arange(
        start: f64,
        stop: f64,
        step: f64,
        dtype: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_linspace(
        start: f64,
        stop: f64,
        num: c_int,
        dtype: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_astype(a: *const mlxs_array, dtype: c_int, out: *mut *mut mlxs_array) -> c_int;

    pub fn mlxs_vec_new() -> *mut mlxs_vec;
    pub fn mlxs_vec_free(v: *mut mlxs_vec);
    pub fn mlxs_vec_len(v: *const mlxs_vec) -> usize;
    pub fn mlxs_vec_push(v: *mut mlxs_vec, a: *const mlxs_array) -> c_int;
    pub fn mlxs_vec_get(v: *const mlxs_vec, i: usize) -> *mut mlxs_array;

    pub fn mlxs_unary(op: c_int, a: *const mlxs_array, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_binary(
        op: c_int,
        a: *const mlxs_array,
        b: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_reduce(
        op: c_int,
        a: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        keepdims: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_var(
        a: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        keepdims: c_int,
        ddof: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_argmax(
        a: *const mlxs_array,
        axis: c_int,
        all_axes: c_int,
        keepdims: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_argmin(
        a: *const mlxs_array,
        axis: c_int,
        all_axes: c_int,
        keepdims: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_softmax(
        a: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        precise: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_cumsum(
        a: *const mlxs_array,
        axis: c_int,
        reverse: c_int,
        inclusive: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_sort(a: *const mlxs_array, axis: c_int, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_argsort(a: *const mlxs_array, axis: c_int, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_topk(
        a: *const mlxs_array,
        k: c_int,
        axis: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_where(
        cond: *const mlxs_array,
        a: *const mlxs_array,
        b: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_clip(
        a: *const mlxs_array,
        lo: *const mlxs_array,
        hi: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;

    pub fn mlxs_reshape(
        a: *const mlxs_array,
        shape: *const i32,
        ndim: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_transpose(
        a: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_swapaxes(
        a: *const mlxs_array,
        axis1: c_int,
        axis2: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_expand_dims(
        a: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_squeeze(
        a: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_flatten(
        a: *const mlxs_array,
        start_axis: c_int,
        end_axis: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_broadcast_to(
        a: *const mlxs_array,
        shape: *const i32,
        ndim: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_tile(
        a: *const mlxs_array,
        reps: *const c_int,
        nreps: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_concatenate(
        arrays: *const mlxs_vec,
        axis: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_stack(arrays: *const mlxs_vec, axis: c_int, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_split_sections(
        a: *const mlxs_array,
        sections: c_int,
        axis: c_int,
        out: *mut *mut mlxs_vec,
    ) -> c_int;
    pub fn mlxs_split_indices(
        a: *const mlxs_array,
        indices: *const i32,
        n: usize,
        axis: c_int,
        out: *mut *mut mlxs_vec,
    ) -> c_int;
    pub fn mlxs_slice(
        a: *const mlxs_array,
        start: *const i32,
        stop: *const i32,
        strides: *const i32,
        ndim: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_slice_update(
        src: *const mlxs_array,
        update: *const mlxs_array,
        start: *const i32,
        stop: *const i32,
        strides: *const i32,
        ndim: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_slice_update_dynamic(
        src: *const mlxs_array,
        update: *const mlxs_array,
        start: *const mlxs_array,
        axes: *const c_int,
        naxes: usize,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_take(
        a: *const mlxs_array,
        indices: *const mlxs_array,
        axis: c_int,
        all_axes: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_take_along_axis(
        a: *const mlxs_array,
        indices: *const mlxs_array,
        axis: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_pad(
        a: *const mlxs_array,
        axes: *const c_int,
        low: *const i32,
        high: *const i32,
        n: usize,
        value: *const mlxs_array,
        mode: *const c_char,
        out: *mut *mut mlxs_array,
    ) -> c_int;

    pub fn mlxs_addmm(
        c: *const mlxs_array,
        a: *const mlxs_array,
        b: *const mlxs_array,
        alpha: f32,
        beta: f32,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn mlxs_conv2d(
        input: *const mlxs_array,
        weight: *const mlxs_array,
        stride_h: c_int,
        stride_w: c_int,
        pad_h: c_int,
        pad_w: c_int,
        dilation_h: c_int,
        dilation_w: c_int,
        groups: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;

    pub fn mlxs_rms_norm(
        x: *const mlxs_array,
        weight: *const mlxs_array,
        eps: f32,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_layer_norm(
        x: *const mlxs_array,
        weight: *const mlxs_array,
        bias: *const mlxs_array,
        eps: f32,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn mlxs_rope(
        x: *const mlxs_array,
        dims: c_int,
        traditional: c_int,
        has_base: c_int,
        base: f32,
        scale: f32,
        offset: c_int,
        freqs: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn mlxs_rope_dynamic(
        x: *const mlxs_array,
        dims: c_int,
        traditional: c_int,
        has_base: c_int,
        base: f32,
        scale: f32,
        offset: *const mlxs_array,
        freqs: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_rope_table(
        x: *const mlxs_array,
        cos: *const mlxs_array,
        sin: *const mlxs_array,
        weight: *const mlxs_array,
        eps: f32,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn mlxs_residual_rms_norm(
        x: *const mlxs_array,
        y: *const mlxs_array,
        y_weight: *const mlxs_array,
        y_eps: f32,
        gate: *const mlxs_array,
        out_weight: *const mlxs_array,
        out_eps: f32,
        scale: *const mlxs_array,
        out: *mut *mut mlxs_vec,
    ) -> c_int;
    pub fn mlxs_sdpa(
        q: *const mlxs_array,
        k: *const mlxs_array,
        v: *const mlxs_array,
        scale: f32,
        mask_mode: *const c_char,
        mask: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;

    pub fn mlxs_quantize(
        w: *const mlxs_array,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        out: *mut *mut mlxs_vec,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn mlxs_dequantize(
        w: *const mlxs_array,
        scales: *const mlxs_array,
        biases: *const mlxs_array,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        dtype: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    pub fn mlxs_quantized_matmul(
        x: *const mlxs_array,
        w: *const mlxs_array,
        scales: *const mlxs_array,
        biases: *const mlxs_array,
        transpose: c_int,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_to_fp8(x: *const mlxs_array, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_from_fp8(x: *const mlxs_array, dtype: c_int, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_fp8_quantize(x: *const mlxs_array, out: *mut *mut mlxs_vec) -> c_int;
    pub fn mlxs_fp8_quantize_swiglu(
        gate: *const mlxs_array,
        up: *const mlxs_array,
        out: *mut *mut mlxs_vec,
    ) -> c_int;
    pub fn mlxs_fp8_matmul(
        x: *const mlxs_array,
        x_scale: *const mlxs_array,
        w: *const mlxs_array,
        w_scale: *const mlxs_array,
        dtype: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_fp8_kernel(n: c_int, k: c_int) -> c_int;

    pub fn mlxs_random_key(seed: u64, out: *mut *mut mlxs_array) -> c_int;
    pub fn mlxs_random_split(
        key: *const mlxs_array,
        num: c_int,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_random_normal(
        shape: *const i32,
        ndim: usize,
        dtype: c_int,
        loc: f32,
        scale: f32,
        key: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;
    pub fn mlxs_random_uniform(
        low: *const mlxs_array,
        high: *const mlxs_array,
        shape: *const i32,
        ndim: usize,
        dtype: c_int,
        key: *const mlxs_array,
        out: *mut *mut mlxs_array,
    ) -> c_int;

    pub fn mlxs_compile(
        trace: TraceFn,
        ctx: *mut c_void,
        release: Release,
        shapeless: c_int,
        out: *mut *mut mlxs_closure,
    ) -> c_int;
    pub fn mlxs_closure_call(
        f: *mut mlxs_closure,
        inputs: *const mlxs_vec,
        outputs: *mut *mut mlxs_vec,
    ) -> c_int;
    pub fn mlxs_closure_free(f: *mut mlxs_closure);
    pub fn mlxs_graph_dump(
        outputs: *const mlxs_vec,
        s: *mut *const c_char,
        len: *mut usize,
    ) -> c_int;

    pub fn mlxs_eval(arrays: *const mlxs_vec) -> c_int;
    pub fn mlxs_async_eval(arrays: *const mlxs_vec) -> c_int;
    pub fn mlxs_synchronize() -> c_int;
    pub fn mlxs_default_device(kind: *mut c_int, index: *mut c_int) -> c_int;
    pub fn mlxs_set_default_device(kind: c_int, index: c_int) -> c_int;
    pub fn mlxs_device_available(kind: c_int, index: c_int, available: *mut c_int) -> c_int;

    pub fn mlxs_active_memory(out: *mut usize) -> c_int;
    pub fn mlxs_peak_memory(out: *mut usize) -> c_int;
    pub fn mlxs_reset_peak_memory() -> c_int;
    pub fn mlxs_cache_memory(out: *mut usize) -> c_int;
    pub fn mlxs_clear_cache() -> c_int;
    pub fn mlxs_memory_limit(out: *mut usize) -> c_int;
    pub fn mlxs_set_memory_limit(limit: usize, previous: *mut usize) -> c_int;
    pub fn mlxs_set_cache_limit(limit: usize, previous: *mut usize) -> c_int;
    pub fn mlxs_set_wired_limit(limit: usize, previous: *mut usize) -> c_int;

    pub fn mlxs_version() -> *const c_char;
    pub fn mlxs_blas() -> *const c_char;
}
