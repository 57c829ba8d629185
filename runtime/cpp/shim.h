// A small C ABI over the MLX C++ API, for the Rust runtime.
//
// Conventions:
// - `mlxs_array` and `mlxs_vec` are opaque owning handles (an `mlx::core::array` and a
//   `std::vector<mlx::core::array>`); every handle returned through an out-parameter is
//   owned by the caller and released with the matching `_free`.
// - Functions that can fail return 0 on success and non-zero on failure. No C++ exception
//   ever crosses this boundary: the message of the one that was caught is kept per thread
//   and read with `mlxs_last_error` right after the failing call.
// - Optional array arguments are NULL when absent.
// - Dtype and device codes are the enums below; the Rust side mirrors them.

#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mlxs_array mlxs_array;
typedef struct mlxs_vec mlxs_vec;
typedef struct mlxs_closure mlxs_closure;

// A function MLX traces: reads `inputs`, pushes its results onto `outputs`, returns 0; or
// returns non-zero (its caller keeps the reason). It must not unwind.
typedef int (*mlxs_trace_fn)(void* ctx, const mlxs_vec* inputs, mlxs_vec* outputs);

enum mlxs_dtype {
  MLXS_BOOL = 0,
  MLXS_U8 = 1,
  MLXS_U16 = 2,
  MLXS_U32 = 3,
  MLXS_U64 = 4,
  MLXS_I8 = 5,
  MLXS_I16 = 6,
  MLXS_I32 = 7,
  MLXS_I64 = 8,
  MLXS_F16 = 9,
  MLXS_BF16 = 10,
  MLXS_F32 = 11,
  MLXS_F64 = 12,
  MLXS_C64 = 13,
};

enum mlxs_unary_op {
  MLXS_NEGATIVE,
  MLXS_EXP,
  MLXS_LOG,
  MLXS_LOG1P,
  MLXS_SQRT,
  MLXS_RSQRT,
  MLXS_SQUARE,
  MLXS_ABS,
  MLXS_SIGN,
  MLXS_SIN,
  MLXS_COS,
  MLXS_TANH,
  MLXS_SIGMOID,
  MLXS_ERF,
  MLXS_FLOOR,
  MLXS_CEIL,
  MLXS_ROUND,
  MLXS_RECIPROCAL,
  MLXS_LOGICAL_NOT,
  MLXS_STOP_GRADIENT,
  MLXS_CONTIGUOUS,
  MLXS_ISFINITE,
  MLXS_UNARY_COUNT,
};

enum mlxs_binary_op {
  MLXS_ADD,
  MLXS_SUBTRACT,
  MLXS_MULTIPLY,
  MLXS_DIVIDE,
  MLXS_REMAINDER,
  MLXS_POWER,
  MLXS_MAXIMUM,
  MLXS_MINIMUM,
  MLXS_EQUAL,
  MLXS_NOT_EQUAL,
  MLXS_LESS,
  MLXS_LESS_EQUAL,
  MLXS_GREATER,
  MLXS_GREATER_EQUAL,
  MLXS_LOGICAL_AND,
  MLXS_LOGICAL_OR,
  MLXS_MATMUL,
  MLXS_BINARY_COUNT,
};

enum mlxs_reduce_op {
  MLXS_SUM,
  MLXS_MEAN,
  MLXS_MAX,
  MLXS_MIN,
  MLXS_PROD,
  MLXS_LOGSUMEXP,
  MLXS_ALL,
  MLXS_ANY,
  MLXS_REDUCE_COUNT,
};

// --- errors -------------------------------------------------------------------------------

// The message of the last failure on this thread (UTF-8, not NUL-terminated).
const char* mlxs_last_error(size_t* len);

// The C++ spelling of an op code, used by the Rust side to check that its enums match.
const char* mlxs_unary_name(int op);
const char* mlxs_binary_name(int op);
const char* mlxs_reduce_name(int op);

// --- array handles ------------------------------------------------------------------------

void mlxs_array_free(mlxs_array* a);
// Null if out of memory.
mlxs_array* mlxs_array_clone(const mlxs_array* a);
int mlxs_array_dtype(const mlxs_array* a);
size_t mlxs_array_ndim(const mlxs_array* a);
const int32_t* mlxs_array_shape(const mlxs_array* a);
size_t mlxs_array_size(const mlxs_array* a);
size_t mlxs_array_nbytes(const mlxs_array* a);
// 1 when the array's data is computed (or scheduled to be) and its graph is detached.
int mlxs_array_is_evaluated(const mlxs_array* a);

// Copies `nbytes` bytes of row-major data; evaluates the array first.
int mlxs_array_read(const mlxs_array* a, void* dst, size_t nbytes);
// MLX's printed form; the string lives until the next call on this thread.
int mlxs_array_to_string(const mlxs_array* a, const char** s, size_t* len);

// --- creation -----------------------------------------------------------------------------

int mlxs_array_from_data(
    const void* data, const int32_t* shape, size_t ndim, int dtype, mlxs_array** out);
// Wraps memory owned elsewhere without copying where MLX can (on a CUDA GPU it is copied
// into device memory before the call returns). The shim owns `ctx` from the call on:
// `release(ctx)` runs exactly once, when MLX is done with the memory or if this fails.
int mlxs_array_from_external(
    void* data, const int32_t* shape, size_t ndim, int dtype,
    void (*release)(void*), void* ctx, mlxs_array** out);
// `value` is a scalar array; the result has its dtype.
int mlxs_full(const int32_t* shape, size_t ndim, const mlxs_array* value, mlxs_array** out);
int mlxs_arange(double start, double stop, double step, int dtype, mlxs_array** out);
int mlxs_linspace(double start, double stop, int num, int dtype, mlxs_array** out);
int mlxs_astype(const mlxs_array* a, int dtype, mlxs_array** out);

// --- vectors of arrays ----------------------------------------------------------------------

// Null if out of memory.
mlxs_vec* mlxs_vec_new(void);
void mlxs_vec_free(mlxs_vec* v);
size_t mlxs_vec_len(const mlxs_vec* v);
int mlxs_vec_push(mlxs_vec* v, const mlxs_array* a);
// A new handle to element i (i < len); null if out of memory.
mlxs_array* mlxs_vec_get(const mlxs_vec* v, size_t i);

// --- element-wise and reductions ----------------------------------------------------------

int mlxs_unary(int op, const mlxs_array* a, mlxs_array** out);
int mlxs_binary(int op, const mlxs_array* a, const mlxs_array* b, mlxs_array** out);
// `axes == NULL` reduces over every axis.
int mlxs_reduce(
    int op, const mlxs_array* a, const int* axes, size_t naxes, int keepdims,
    mlxs_array** out);
int mlxs_var(
    const mlxs_array* a, const int* axes, size_t naxes, int keepdims, int ddof,
    mlxs_array** out);
// `all_axes` non-zero: over the flattened array (axis ignored).
int mlxs_argmax(const mlxs_array* a, int axis, int all_axes, int keepdims, mlxs_array** out);
int mlxs_argmin(const mlxs_array* a, int axis, int all_axes, int keepdims, mlxs_array** out);
int mlxs_softmax(
    const mlxs_array* a, const int* axes, size_t naxes, int precise, mlxs_array** out);
int mlxs_cumsum(const mlxs_array* a, int axis, int reverse, int inclusive, mlxs_array** out);
int mlxs_sort(const mlxs_array* a, int axis, mlxs_array** out);
int mlxs_argsort(const mlxs_array* a, int axis, mlxs_array** out);
int mlxs_topk(const mlxs_array* a, int k, int axis, mlxs_array** out);
int mlxs_where(
    const mlxs_array* cond, const mlxs_array* a, const mlxs_array* b, mlxs_array** out);
int mlxs_clip(
    const mlxs_array* a, const mlxs_array* lo, const mlxs_array* hi, mlxs_array** out);

// --- shapes and indexing --------------------------------------------------------------------

int mlxs_reshape(const mlxs_array* a, const int32_t* shape, size_t ndim, mlxs_array** out);
// `axes == NULL` reverses the axes.
int mlxs_transpose(const mlxs_array* a, const int* axes, size_t naxes, mlxs_array** out);
int mlxs_swapaxes(const mlxs_array* a, int axis1, int axis2, mlxs_array** out);
int mlxs_expand_dims(const mlxs_array* a, const int* axes, size_t naxes, mlxs_array** out);
// `axes == NULL` removes every axis of size 1.
int mlxs_squeeze(const mlxs_array* a, const int* axes, size_t naxes, mlxs_array** out);
int mlxs_flatten(const mlxs_array* a, int start_axis, int end_axis, mlxs_array** out);
int mlxs_broadcast_to(
    const mlxs_array* a, const int32_t* shape, size_t ndim, mlxs_array** out);
int mlxs_tile(const mlxs_array* a, const int* reps, size_t nreps, mlxs_array** out);
int mlxs_concatenate(const mlxs_vec* arrays, int axis, mlxs_array** out);
int mlxs_stack(const mlxs_vec* arrays, int axis, mlxs_array** out);
int mlxs_split_sections(const mlxs_array* a, int sections, int axis, mlxs_vec** out);
int mlxs_split_indices(
    const mlxs_array* a, const int32_t* indices, size_t n, int axis, mlxs_vec** out);
int mlxs_slice(
    const mlxs_array* a, const int32_t* start, const int32_t* stop, const int32_t* strides,
    size_t ndim, mlxs_array** out);
int mlxs_slice_update(
    const mlxs_array* src, const mlxs_array* update, const int32_t* start,
    const int32_t* stop, const int32_t* strides, size_t ndim, mlxs_array** out);
// `update` written into `src` from the positions in `start` (an integer array with one entry
// per axis in `axes`), known only when the graph runs.
int mlxs_slice_update_dynamic(
    const mlxs_array* src, const mlxs_array* update, const mlxs_array* start, const int* axes,
    size_t naxes, mlxs_array** out);
// `all_axes` non-zero: index the flattened array.
int mlxs_take(
    const mlxs_array* a, const mlxs_array* indices, int axis, int all_axes, mlxs_array** out);
int mlxs_take_along_axis(
    const mlxs_array* a, const mlxs_array* indices, int axis, mlxs_array** out);
// `mode` is "constant" or "edge".
int mlxs_pad(
    const mlxs_array* a, const int* axes, const int32_t* low, const int32_t* high, size_t n,
    const mlxs_array* value, const char* mode, mlxs_array** out);

// --- linear algebra and convolution ---------------------------------------------------------

int mlxs_addmm(
    const mlxs_array* c, const mlxs_array* a, const mlxs_array* b, float alpha, float beta,
    mlxs_array** out);
int mlxs_conv2d(
    const mlxs_array* input, const mlxs_array* weight, int stride_h, int stride_w,
    int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, mlxs_array** out);

// --- fast ops -------------------------------------------------------------------------------

int mlxs_rms_norm(const mlxs_array* x, const mlxs_array* weight, float eps, mlxs_array** out);
int mlxs_layer_norm(
    const mlxs_array* x, const mlxs_array* weight, const mlxs_array* bias, float eps,
    mlxs_array** out);
// `has_base` zero means no base (then `freqs` must be given).
int mlxs_rope(
    const mlxs_array* x, int dims, int traditional, int has_base, float base, float scale,
    int offset, const mlxs_array* freqs, mlxs_array** out);
// The same with the first position an integer array, known only when the graph runs.
int mlxs_rope_dynamic(
    const mlxs_array* x, int dims, int traditional, int has_base, float base, float scale,
    const mlxs_array* offset, const mlxs_array* freqs, mlxs_array** out);
// Interleaved-pair RoPE by per-token tables, after an RMSNorm over each head when `weight`
// is not null (kernels.h: one kernel on CUDA GPUs).
int mlxs_rope_table(
    const mlxs_array* x, const mlxs_array* cos, const mlxs_array* sin, const mlxs_array* weight,
    float eps, mlxs_array** out);
// kernels.h's residual_rms_norm; null for an absent array. Out: {h}, {out} or {h, out}.
int mlxs_residual_rms_norm(
    const mlxs_array* x, const mlxs_array* y, const mlxs_array* y_weight, float y_eps,
    const mlxs_array* gate, const mlxs_array* out_weight, float out_eps, const mlxs_array* scale,
    mlxs_vec** out);
// `mask_mode` is "" (no mask or an array mask) or "causal".
int mlxs_sdpa(
    const mlxs_array* q, const mlxs_array* k, const mlxs_array* v, float scale,
    const char* mask_mode, const mlxs_array* mask, mlxs_array** out);

// --- quantization ---------------------------------------------------------------------------

// Out: [w_q, scales] or [w_q, scales, biases] (affine).
int mlxs_quantize(const mlxs_array* w, int group_size, int bits, const char* mode, mlxs_vec** out);
// `dtype < 0`: MLX's default output dtype.
int mlxs_dequantize(
    const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases, int group_size,
    int bits, const char* mode, int dtype, mlxs_array** out);
int mlxs_quantized_matmul(
    const mlxs_array* x, const mlxs_array* w, const mlxs_array* scales,
    const mlxs_array* biases, int transpose, int group_size, int bits, const char* mode,
    mlxs_array** out);

// E4M3 float8 as uint8 bit patterns: to and from any float dtype.
int mlxs_to_fp8(const mlxs_array* x, mlxs_array** out);
int mlxs_from_fp8(const mlxs_array* x, int dtype, mlxs_array** out);
// kernels.h's fp8_quantize: per-row E4M3 bytes and float32 scales over the last axis.
// Out: {q, scale}.
int mlxs_fp8_quantize(const mlxs_array* x, mlxs_vec** out);
// kernels.h's fp8_quantize_swiglu: fp8_quantize of silu(gate) * up. Out: {q, scale}.
int mlxs_fp8_quantize_swiglu(const mlxs_array* gate, const mlxs_array* up, mlxs_vec** out);
// x[..., K] · w[N, K]ᵀ for E4M3 operands, each row of x times its x_scale (shape x's less
// its last axis) and each column times w_scale[N], in the floating-point `dtype`: on a GPU
// with FP8 tensor cores (CUDA builds) cuBLASLt's FP8 kernel, elsewhere the dequantized
// product in float32.
int mlxs_fp8_matmul(
    const mlxs_array* x, const mlxs_array* x_scale, const mlxs_array* w,
    const mlxs_array* w_scale, int dtype, mlxs_array** out);
// 1 when mlxs_fp8_matmul of an [M, K] by [N, K] product runs the FP8 kernel on the default
// device, 0 when it dequantizes.
int mlxs_fp8_kernel(int n, int k);

// --- random ---------------------------------------------------------------------------------

int mlxs_random_key(uint64_t seed, mlxs_array** out);
int mlxs_random_split(const mlxs_array* key, int num, mlxs_array** out);
int mlxs_random_normal(
    const int32_t* shape, size_t ndim, int dtype, float loc, float scale,
    const mlxs_array* key, mlxs_array** out);
int mlxs_random_uniform(
    const mlxs_array* low, const mlxs_array* high, const int32_t* shape, size_t ndim,
    int dtype, const mlxs_array* key, mlxs_array** out);

// --- compiled functions -------------------------------------------------------------------

// Compiles `trace`: MLX calls it with tracer inputs the first time it sees each input
// signature (shapes unless `shapeless`, dtypes, ndims) and replays the recorded graph after.
// `release(ctx)` runs once the compiled function and MLX's cache entry for it are gone.
int mlxs_compile(
    mlxs_trace_fn trace, void* ctx, void (*release)(void*), int shapeless, mlxs_closure** out);
int mlxs_closure_call(mlxs_closure* f, const mlxs_vec* inputs, mlxs_vec** outputs);
void mlxs_closure_free(mlxs_closure* f);

// A text dump of the graph that computes `outputs`: one line per node, inputs first.
// The string lives until the next call on this thread.
int mlxs_graph_dump(const mlxs_vec* outputs, const char** s, size_t* len);

// --- evaluation and devices -----------------------------------------------------------------

int mlxs_eval(const mlxs_vec* arrays);
int mlxs_async_eval(const mlxs_vec* arrays);
int mlxs_synchronize(void);
// type: 0 = cpu, 1 = gpu.
int mlxs_default_device(int* type, int* index);
int mlxs_set_default_device(int type, int index);
int mlxs_device_available(int type, int index, int* available);

enum mlxs_backend_kind { MLXS_BACKEND_CPU = 0, MLXS_BACKEND_CUDA = 1, MLXS_BACKEND_METAL = 2 };
// The backend the linked libmlx was compiled with (one of mlxs_backend_kind).
int mlxs_backend(int* backend);
// How many devices of `type` MLX can run on now: 0 GPUs where the build has none, and where
// a CUDA build finds no driver or no visible device.
int mlxs_device_count(int type, int* count);
// MLX's description of a device (`mx::device_info`): for each property, three
// NUL-terminated strings: its key, its kind ("s" text, "n" number) and its value. The
// buffer lives until the next call on this thread.
int mlxs_device_info(int type, int index, const char** s, size_t* len);

// --- memory ---------------------------------------------------------------------------------

int mlxs_active_memory(size_t* out);
int mlxs_peak_memory(size_t* out);
int mlxs_reset_peak_memory(void);
int mlxs_cache_memory(size_t* out);
int mlxs_clear_cache(void);
int mlxs_memory_limit(size_t* out);
int mlxs_set_memory_limit(size_t limit, size_t* previous);
int mlxs_set_cache_limit(size_t limit, size_t* previous);
int mlxs_set_wired_limit(size_t limit, size_t* previous);

// --- version --------------------------------------------------------------------------------

const char* mlxs_version(void);
// The BLAS that float32 matmul runs on, as that library describes itself.
const char* mlxs_blas(void);

#ifdef __cplusplus
}
#endif
