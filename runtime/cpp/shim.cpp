// The C ABI of shim.h over the MLX C++ API. Every entry point that can throw runs inside
// `guard`, which turns any exception into a status code and a per-thread message.

#include "shim.h"

#include "kernels.h"

#ifdef MLXS_CUDA_RUNTIME
#include "device_memory.h"
#include "fp8_gemm.h"
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <exception>
#include <functional>
#include <sstream>
#include <atomic>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mlx/compile_impl.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"
#include "mlx/version.h"

namespace mx = mlx::core;

#ifdef MLXS_OPENBLAS
// Declared by OpenBLAS's cblas.h, which we don't include to keep its BLAS prototypes out of
// this translation unit.
extern "C" char* openblas_get_config(void);

// Keeps libopenblas needed, ahead of libmlx, in every binary. Binaries that never call
// mlxs_blas lose it to --gc-sections, and --as-needed then drops OpenBLAS; a static
// initializer is a garbage-collection root.
__attribute__((constructor)) static void mlxs_keep_openblas(void) {
  char* (*volatile keep)(void) = openblas_get_config;
  (void)keep;
}
#endif

// MLX's CUDA backend records kernels into CUDA graphs and keeps every buffer a graph uses
// alive until the graph has run; on Hopper it closes a graph only after 1000 MB of inputs.
// A transformer step then peaks at about twice its weights. Measured on an H200 with the
// Z-Image-Turbo transformer (11.46 GiB of weights, 1024x1024): peak 22.9 GiB at MLX's
// default, 15.2 at 400 MB, 13.8 at 200, 13.0 at 100, 12.4 at 50, all within 1% of the same
// step time; later, with the sampler's pipelined boundaries, 12.06 GiB at 25 MB (diffusers
// peaks at 12.10) against 12.41 at 50, at the same speed. The user's own
// MLX_MAX_MB_PER_BUFFER wins.
// Only CUDA builds set it: Metal reads the same variable for its command buffers, with
// defaults of its own.
//
// The kernels MLX's CUDA backend compiles at first use (about a minute of CPU for a
// transformer) are cached on disk, by default under /tmp, which many machines empty at
// every boot: the user's cache directory keeps them, and the runtime's own (jit.cpp).
// MLX_PTX_CACHE_DIR wins here too.
__attribute__((constructor)) static void mlxs_backend_defaults(void) {
#ifdef MLXS_CUDA
  setenv("MLX_MAX_MB_PER_BUFFER", "25", /* overwrite */ 0);
#endif
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  std::string base = xdg && *xdg ? std::string(xdg)
      : home && *home            ? std::string(home) + "/.cache"
                                 : std::string();
  if (!base.empty()) {
    std::string dir = base + "/mlx-rs/" + mx::version() + "/ptx";
    setenv("MLX_PTX_CACHE_DIR", dir.c_str(), /* overwrite */ 0);
  }
}

struct mlxs_array {
  mx::array a;
};

struct mlxs_vec {
  std::vector<mx::array> v;
};

struct mlxs_closure {
  std::function<std::vector<mx::array>(const std::vector<mx::array>&)> f;
  // MLX keys its compile caches, one per thread, by this id.
  std::uintptr_t id;
  // The caches of the threads that called `f`, to erase its entries from when freed.
  std::mutex mutex;
  std::vector<mx::detail::CompileCacheWeakPtr> caches;
};

namespace {

thread_local std::string last_error;
thread_local std::string text_buffer;

// MLX gives each thread its own default streams, whose command encoders only that thread
// can use: an array built on one thread could not be evaluated on another ("There is no
// Stream(cpu, 0) in current thread"). The runtime serializes evaluation process-wide
// instead, so every thread builds on one process-wide stream per device.
void use_process_wide_streams() {
  thread_local bool done = false;
  if (done) {
    return;
  }
  static const std::vector<mx::Stream> streams = [] {
    std::vector<mx::Stream> s{mx::new_thread_unsafe_stream(mx::Device::cpu)};
    if (mx::is_available(mx::Device::gpu)) {
      s.push_back(mx::new_thread_unsafe_stream(mx::Device::gpu));
    } else if (mx::default_device() == mx::Device::gpu) {
      // A CUDA build of MLX makes the GPU its default device because it was compiled with
      // CUDA, even where it sees no GPU (CUDA_VISIBLE_DEVICES="", a driver without devices):
      // every op would then fail at eval. The CPU is the default there.
      mx::set_default_device(mx::Device::cpu);
    }
    return s;
  }();
  for (const auto& s : streams) {
    mx::set_default_stream(s);
  }
  done = true;
}

template <class F>
int guard(F&& f) noexcept {
  try {
    use_process_wide_streams();
    f();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

// Takes ownership of a context handed over by Rust: `release(ctx)` runs exactly once, when
// the last copy of `owner` dies, or at once if this fails (shared_ptr's constructor releases
// what it cannot own).
bool adopt(void* ctx, void (*release)(void*), std::shared_ptr<void>& owner) noexcept {
  try {
    owner = std::shared_ptr<void>(ctx, release);
    return true;
  } catch (...) {
    last_error = "out of memory";
    return false;
  }
}

mlxs_array* wrap(mx::array a) {
  return new mlxs_array{std::move(a)};
}

mx::Dtype to_dtype(int code) {
  switch (code) {
    case MLXS_BOOL: return mx::bool_;
    case MLXS_U8: return mx::uint8;
    case MLXS_U16: return mx::uint16;
    case MLXS_U32: return mx::uint32;
    case MLXS_U64: return mx::uint64;
    case MLXS_I8: return mx::int8;
    case MLXS_I16: return mx::int16;
    case MLXS_I32: return mx::int32;
    case MLXS_I64: return mx::int64;
    case MLXS_F16: return mx::float16;
    case MLXS_BF16: return mx::bfloat16;
    case MLXS_F32: return mx::float32;
    case MLXS_F64: return mx::float64;
    case MLXS_C64: return mx::complex64;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(code));
}

int from_dtype(mx::Dtype d) {
  switch (d.val()) {
    case mx::Dtype::Val::bool_: return MLXS_BOOL;
    case mx::Dtype::Val::uint8: return MLXS_U8;
    case mx::Dtype::Val::uint16: return MLXS_U16;
    case mx::Dtype::Val::uint32: return MLXS_U32;
    case mx::Dtype::Val::uint64: return MLXS_U64;
    case mx::Dtype::Val::int8: return MLXS_I8;
    case mx::Dtype::Val::int16: return MLXS_I16;
    case mx::Dtype::Val::int32: return MLXS_I32;
    case mx::Dtype::Val::int64: return MLXS_I64;
    case mx::Dtype::Val::float16: return MLXS_F16;
    case mx::Dtype::Val::bfloat16: return MLXS_BF16;
    case mx::Dtype::Val::float32: return MLXS_F32;
    case mx::Dtype::Val::float64: return MLXS_F64;
    case mx::Dtype::Val::complex64: return MLXS_C64;
  }
  return -1;
}

mx::Shape to_shape(const int32_t* shape, size_t ndim) {
  return mx::Shape(shape, shape + ndim);
}

std::vector<int> to_ints(const int* v, size_t n) {
  return std::vector<int>(v, v + n);
}

std::optional<mx::array> opt(const mlxs_array* a) {
  if (a == nullptr) {
    return std::nullopt;
  }
  return a->a;
}

// Typed construction: MLX's iterator constructor converts element by element, so the
// pointer must have the element type of the dtype.
mx::array from_data(const void* data, mx::Shape shape, mx::Dtype dtype) {
  switch (dtype.val()) {
    case mx::Dtype::Val::bool_: return mx::array(static_cast<const bool*>(data), shape, dtype);
    case mx::Dtype::Val::uint8: return mx::array(static_cast<const uint8_t*>(data), shape, dtype);
    case mx::Dtype::Val::uint16: return mx::array(static_cast<const uint16_t*>(data), shape, dtype);
    case mx::Dtype::Val::uint32: return mx::array(static_cast<const uint32_t*>(data), shape, dtype);
    case mx::Dtype::Val::uint64: return mx::array(static_cast<const uint64_t*>(data), shape, dtype);
    case mx::Dtype::Val::int8: return mx::array(static_cast<const int8_t*>(data), shape, dtype);
    case mx::Dtype::Val::int16: return mx::array(static_cast<const int16_t*>(data), shape, dtype);
    case mx::Dtype::Val::int32: return mx::array(static_cast<const int32_t*>(data), shape, dtype);
    case mx::Dtype::Val::int64: return mx::array(static_cast<const int64_t*>(data), shape, dtype);
    case mx::Dtype::Val::float16: return mx::array(static_cast<const mx::float16_t*>(data), shape, dtype);
    case mx::Dtype::Val::bfloat16: return mx::array(static_cast<const mx::bfloat16_t*>(data), shape, dtype);
    case mx::Dtype::Val::float32: return mx::array(static_cast<const float*>(data), shape, dtype);
    case mx::Dtype::Val::float64: return mx::array(static_cast<const double*>(data), shape, dtype);
    case mx::Dtype::Val::complex64: return mx::array(static_cast<const mx::complex64_t*>(data), shape, dtype);
  }
  throw std::invalid_argument("unsupported dtype");
}

mx::Device to_device(int type, int index) {
  if (type == 0) {
    return mx::Device(mx::Device::cpu, index);
  }
  if (type == 1) {
    return mx::Device(mx::Device::gpu, index);
  }
  throw std::invalid_argument("unknown device type " + std::to_string(type));
}

}  // namespace

extern "C" {

// --- errors -------------------------------------------------------------------------------

const char* mlxs_last_error(size_t* len) {
  *len = last_error.size();
  return last_error.data();
}

const char* mlxs_unary_name(int op) {
  switch (op) {
    case MLXS_NEGATIVE: return "negative";
    case MLXS_EXP: return "exp";
    case MLXS_LOG: return "log";
    case MLXS_LOG1P: return "log1p";
    case MLXS_SQRT: return "sqrt";
    case MLXS_RSQRT: return "rsqrt";
    case MLXS_SQUARE: return "square";
    case MLXS_ABS: return "abs";
    case MLXS_SIGN: return "sign";
    case MLXS_SIN: return "sin";
    case MLXS_COS: return "cos";
    case MLXS_TANH: return "tanh";
    case MLXS_SIGMOID: return "sigmoid";
    case MLXS_ERF: return "erf";
    case MLXS_FLOOR: return "floor";
    case MLXS_CEIL: return "ceil";
    case MLXS_ROUND: return "round";
    case MLXS_RECIPROCAL: return "reciprocal";
    case MLXS_LOGICAL_NOT: return "logical_not";
    case MLXS_STOP_GRADIENT: return "stop_gradient";
    case MLXS_CONTIGUOUS: return "contiguous";
    case MLXS_ISFINITE: return "isfinite";
  }
  return nullptr;
}

const char* mlxs_binary_name(int op) {
  switch (op) {
    case MLXS_ADD: return "add";
    case MLXS_SUBTRACT: return "subtract";
    case MLXS_MULTIPLY: return "multiply";
    case MLXS_DIVIDE: return "divide";
    case MLXS_REMAINDER: return "remainder";
    case MLXS_POWER: return "power";
    case MLXS_MAXIMUM: return "maximum";
    case MLXS_MINIMUM: return "minimum";
    case MLXS_EQUAL: return "equal";
    case MLXS_NOT_EQUAL: return "not_equal";
    case MLXS_LESS: return "less";
    case MLXS_LESS_EQUAL: return "less_equal";
    case MLXS_GREATER: return "greater";
    case MLXS_GREATER_EQUAL: return "greater_equal";
    case MLXS_LOGICAL_AND: return "logical_and";
    case MLXS_LOGICAL_OR: return "logical_or";
    case MLXS_MATMUL: return "matmul";
  }
  return nullptr;
}

const char* mlxs_reduce_name(int op) {
  switch (op) {
    case MLXS_SUM: return "sum";
    case MLXS_MEAN: return "mean";
    case MLXS_MAX: return "max";
    case MLXS_MIN: return "min";
    case MLXS_PROD: return "prod";
    case MLXS_LOGSUMEXP: return "logsumexp";
    case MLXS_ALL: return "all";
    case MLXS_ANY: return "any";
  }
  return nullptr;
}

// --- array handles ------------------------------------------------------------------------

void mlxs_array_free(mlxs_array* a) {
  delete a;
}

mlxs_array* mlxs_array_clone(const mlxs_array* a) {
  // Null on allocation failure; the Rust side turns it into a failed array.
  return new (std::nothrow) mlxs_array{a->a};
}

int mlxs_array_dtype(const mlxs_array* a) {
  return from_dtype(a->a.dtype());
}

size_t mlxs_array_ndim(const mlxs_array* a) {
  return a->a.ndim();
}

const int32_t* mlxs_array_shape(const mlxs_array* a) {
  return a->a.shape().data();
}

size_t mlxs_array_size(const mlxs_array* a) {
  return a->a.size();
}

size_t mlxs_array_nbytes(const mlxs_array* a) {
  return a->a.nbytes();
}

int mlxs_array_is_evaluated(const mlxs_array* a) {
  return a->a.status() != mx::array::Status::unscheduled ? 1 : 0;
}

int mlxs_array_read(const mlxs_array* a, void* dst, size_t nbytes) {
  return guard([&] {
    mx::array c = mx::contiguous(a->a);
    c.eval();
    if (c.nbytes() != nbytes) {
      throw std::invalid_argument(
          "read of " + std::to_string(nbytes) + " bytes from an array of " +
          std::to_string(c.nbytes()) + " bytes");
    }
    if (nbytes > 0) {
      std::memcpy(dst, c.data<void>(), nbytes);
    }
  });
}

int mlxs_array_to_string(const mlxs_array* a, const char** s, size_t* len) {
  return guard([&] {
    std::ostringstream os;
    os << a->a;
    text_buffer = os.str();
    *s = text_buffer.data();
    *len = text_buffer.size();
  });
}

// --- creation -----------------------------------------------------------------------------

int mlxs_array_from_data(
    const void* data, const int32_t* shape, size_t ndim, int dtype, mlxs_array** out) {
  return guard([&] { *out = wrap(from_data(data, to_shape(shape, ndim), to_dtype(dtype))); });
}

int mlxs_array_from_external(
    void* data, const int32_t* shape, size_t ndim, int dtype, void (*release)(void*),
    void* ctx, mlxs_array** out) {
  std::shared_ptr<void> owner;
  if (!adopt(ctx, release, owner)) {
    return 1;
  }
  return guard([&] {
#ifdef MLXS_CUDA_RUNTIME
    // On a GPU the data is copied into device memory at once (see device_copy) and the
    // owner released: the mapped file need not outlive the call.
    mx::Device device = mx::default_device();
    if (device.type == mx::Device::gpu) {
      *out = wrap(mlxs::device_copy(
          data, to_shape(shape, ndim), to_dtype(dtype), mx::default_stream(device)));
      owner.reset();
      return;
    }
#endif
    auto deleter = [owner](void*) mutable { owner.reset(); };
    *out = wrap(mx::array(data, to_shape(shape, ndim), to_dtype(dtype), deleter));
  });
}

int mlxs_full(const int32_t* shape, size_t ndim, const mlxs_array* value, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::full(to_shape(shape, ndim), value->a)); });
}

int mlxs_arange(double start, double stop, double step, int dtype, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::arange(start, stop, step, to_dtype(dtype))); });
}

int mlxs_linspace(double start, double stop, int num, int dtype, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::linspace(start, stop, num, to_dtype(dtype))); });
}

int mlxs_astype(const mlxs_array* a, int dtype, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::astype(a->a, to_dtype(dtype))); });
}

// --- vectors of arrays ----------------------------------------------------------------------

mlxs_vec* mlxs_vec_new(void) {
  return new (std::nothrow) mlxs_vec{};
}

void mlxs_vec_free(mlxs_vec* v) {
  delete v;
}

size_t mlxs_vec_len(const mlxs_vec* v) {
  return v->v.size();
}

int mlxs_vec_push(mlxs_vec* v, const mlxs_array* a) {
  return guard([&] { v->v.push_back(a->a); });
}

mlxs_array* mlxs_vec_get(const mlxs_vec* v, size_t i) {
  return new (std::nothrow) mlxs_array{v->v[i]};
}

// --- element-wise and reductions ----------------------------------------------------------

int mlxs_unary(int op, const mlxs_array* a, mlxs_array** out) {
  return guard([&] {
    const mx::array& x = a->a;
    switch (op) {
      case MLXS_NEGATIVE: *out = wrap(mx::negative(x)); return;
      case MLXS_EXP: *out = wrap(mx::exp(x)); return;
      case MLXS_LOG: *out = wrap(mx::log(x)); return;
      case MLXS_LOG1P: *out = wrap(mx::log1p(x)); return;
      case MLXS_SQRT: *out = wrap(mx::sqrt(x)); return;
      case MLXS_RSQRT: *out = wrap(mx::rsqrt(x)); return;
      case MLXS_SQUARE: *out = wrap(mx::square(x)); return;
      case MLXS_ABS: *out = wrap(mx::abs(x)); return;
      case MLXS_SIGN: *out = wrap(mx::sign(x)); return;
      case MLXS_SIN: *out = wrap(mx::sin(x)); return;
      case MLXS_COS: *out = wrap(mx::cos(x)); return;
      case MLXS_TANH: *out = wrap(mx::tanh(x)); return;
      case MLXS_SIGMOID: *out = wrap(mx::sigmoid(x)); return;
      case MLXS_ERF: *out = wrap(mx::erf(x)); return;
      case MLXS_FLOOR: *out = wrap(mx::floor(x)); return;
      case MLXS_CEIL: *out = wrap(mx::ceil(x)); return;
      case MLXS_ROUND: *out = wrap(mx::round(x)); return;
      case MLXS_RECIPROCAL: *out = wrap(mx::reciprocal(x)); return;
      case MLXS_LOGICAL_NOT: *out = wrap(mx::logical_not(x)); return;
      case MLXS_STOP_GRADIENT: *out = wrap(mx::stop_gradient(x)); return;
      case MLXS_CONTIGUOUS: *out = wrap(mx::contiguous(x)); return;
      case MLXS_ISFINITE: *out = wrap(mx::isfinite(x)); return;
    }
    throw std::invalid_argument("unknown unary op " + std::to_string(op));
  });
}

int mlxs_binary(int op, const mlxs_array* a, const mlxs_array* b, mlxs_array** out) {
  return guard([&] {
    const mx::array& x = a->a;
    const mx::array& y = b->a;
    switch (op) {
      case MLXS_ADD: *out = wrap(mx::add(x, y)); return;
      case MLXS_SUBTRACT: *out = wrap(mx::subtract(x, y)); return;
      case MLXS_MULTIPLY: *out = wrap(mx::multiply(x, y)); return;
      case MLXS_DIVIDE: *out = wrap(mx::divide(x, y)); return;
      case MLXS_REMAINDER: *out = wrap(mx::remainder(x, y)); return;
      case MLXS_POWER: *out = wrap(mx::power(x, y)); return;
      case MLXS_MAXIMUM: *out = wrap(mx::maximum(x, y)); return;
      case MLXS_MINIMUM: *out = wrap(mx::minimum(x, y)); return;
      case MLXS_EQUAL: *out = wrap(mx::equal(x, y)); return;
      case MLXS_NOT_EQUAL: *out = wrap(mx::not_equal(x, y)); return;
      case MLXS_LESS: *out = wrap(mx::less(x, y)); return;
      case MLXS_LESS_EQUAL: *out = wrap(mx::less_equal(x, y)); return;
      case MLXS_GREATER: *out = wrap(mx::greater(x, y)); return;
      case MLXS_GREATER_EQUAL: *out = wrap(mx::greater_equal(x, y)); return;
      case MLXS_LOGICAL_AND: *out = wrap(mx::logical_and(x, y)); return;
      case MLXS_LOGICAL_OR: *out = wrap(mx::logical_or(x, y)); return;
      case MLXS_MATMUL: *out = wrap(mx::matmul(x, y)); return;
    }
    throw std::invalid_argument("unknown binary op " + std::to_string(op));
  });
}

int mlxs_reduce(
    int op, const mlxs_array* a, const int* axes, size_t naxes, int keepdims,
    mlxs_array** out) {
  return guard([&] {
    const mx::array& x = a->a;
    std::vector<int> ax;
    if (axes == nullptr) {
      ax.resize(x.ndim());
      for (int i = 0; i < static_cast<int>(x.ndim()); ++i) {
        ax[i] = i;
      }
    } else {
      ax = to_ints(axes, naxes);
    }
    bool keep = keepdims != 0;
    switch (op) {
      case MLXS_SUM: *out = wrap(mx::sum(x, ax, keep)); return;
      case MLXS_MEAN: *out = wrap(mx::mean(x, ax, keep)); return;
      case MLXS_MAX: *out = wrap(mx::max(x, ax, keep)); return;
      case MLXS_MIN: *out = wrap(mx::min(x, ax, keep)); return;
      case MLXS_PROD: *out = wrap(mx::prod(x, ax, keep)); return;
      case MLXS_LOGSUMEXP: *out = wrap(mx::logsumexp(x, ax, keep)); return;
      case MLXS_ALL: *out = wrap(mx::all(x, ax, keep)); return;
      case MLXS_ANY: *out = wrap(mx::any(x, ax, keep)); return;
    }
    throw std::invalid_argument("unknown reduction " + std::to_string(op));
  });
}

int mlxs_var(
    const mlxs_array* a, const int* axes, size_t naxes, int keepdims, int ddof,
    mlxs_array** out) {
  return guard([&] {
    if (axes == nullptr) {
      *out = wrap(mx::var(a->a, keepdims != 0, ddof));
    } else {
      *out = wrap(mx::var(a->a, to_ints(axes, naxes), keepdims != 0, ddof));
    }
  });
}

int mlxs_argmax(const mlxs_array* a, int axis, int all_axes, int keepdims, mlxs_array** out) {
  return guard([&] {
    *out = wrap(all_axes ? mx::argmax(a->a, keepdims != 0) : mx::argmax(a->a, axis, keepdims != 0));
  });
}

int mlxs_argmin(const mlxs_array* a, int axis, int all_axes, int keepdims, mlxs_array** out) {
  return guard([&] {
    *out = wrap(all_axes ? mx::argmin(a->a, keepdims != 0) : mx::argmin(a->a, axis, keepdims != 0));
  });
}

int mlxs_softmax(
    const mlxs_array* a, const int* axes, size_t naxes, int precise, mlxs_array** out) {
  return guard([&] {
    if (axes == nullptr) {
      *out = wrap(mx::softmax(a->a, precise != 0));
    } else {
      *out = wrap(mx::softmax(a->a, to_ints(axes, naxes), precise != 0));
    }
  });
}

int mlxs_cumsum(const mlxs_array* a, int axis, int reverse, int inclusive, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::cumsum(a->a, axis, reverse != 0, inclusive != 0)); });
}

int mlxs_sort(const mlxs_array* a, int axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::sort(a->a, axis)); });
}

int mlxs_argsort(const mlxs_array* a, int axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::argsort(a->a, axis)); });
}

int mlxs_topk(const mlxs_array* a, int k, int axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::topk(a->a, k, axis)); });
}

int mlxs_where(
    const mlxs_array* cond, const mlxs_array* a, const mlxs_array* b, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::where(cond->a, a->a, b->a)); });
}

int mlxs_clip(
    const mlxs_array* a, const mlxs_array* lo, const mlxs_array* hi, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::clip(a->a, opt(lo), opt(hi))); });
}

// --- shapes and indexing --------------------------------------------------------------------

int mlxs_reshape(const mlxs_array* a, const int32_t* shape, size_t ndim, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::reshape(a->a, to_shape(shape, ndim))); });
}

int mlxs_transpose(const mlxs_array* a, const int* axes, size_t naxes, mlxs_array** out) {
  return guard([&] {
    *out = wrap(axes == nullptr ? mx::transpose(a->a) : mx::transpose(a->a, to_ints(axes, naxes)));
  });
}

int mlxs_swapaxes(const mlxs_array* a, int axis1, int axis2, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::swapaxes(a->a, axis1, axis2)); });
}

int mlxs_expand_dims(const mlxs_array* a, const int* axes, size_t naxes, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::expand_dims(a->a, to_ints(axes, naxes))); });
}

int mlxs_squeeze(const mlxs_array* a, const int* axes, size_t naxes, mlxs_array** out) {
  return guard([&] {
    *out = wrap(axes == nullptr ? mx::squeeze(a->a) : mx::squeeze(a->a, to_ints(axes, naxes)));
  });
}

int mlxs_flatten(const mlxs_array* a, int start_axis, int end_axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::flatten(a->a, start_axis, end_axis)); });
}

int mlxs_broadcast_to(
    const mlxs_array* a, const int32_t* shape, size_t ndim, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::broadcast_to(a->a, to_shape(shape, ndim))); });
}

int mlxs_tile(const mlxs_array* a, const int* reps, size_t nreps, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::tile(a->a, to_ints(reps, nreps))); });
}

int mlxs_concatenate(const mlxs_vec* arrays, int axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::concatenate(arrays->v, axis)); });
}

int mlxs_stack(const mlxs_vec* arrays, int axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::stack(arrays->v, axis)); });
}

int mlxs_split_sections(const mlxs_array* a, int sections, int axis, mlxs_vec** out) {
  return guard([&] { *out = new mlxs_vec{mx::split(a->a, sections, axis)}; });
}

int mlxs_split_indices(
    const mlxs_array* a, const int32_t* indices, size_t n, int axis, mlxs_vec** out) {
  return guard([&] { *out = new mlxs_vec{mx::split(a->a, to_shape(indices, n), axis)}; });
}

int mlxs_slice(
    const mlxs_array* a, const int32_t* start, const int32_t* stop, const int32_t* strides,
    size_t ndim, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::slice(
        a->a, to_shape(start, ndim), to_shape(stop, ndim), to_shape(strides, ndim)));
  });
}

int mlxs_slice_update(
    const mlxs_array* src, const mlxs_array* update, const int32_t* start,
    const int32_t* stop, const int32_t* strides, size_t ndim, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::slice_update(
        src->a, update->a, to_shape(start, ndim), to_shape(stop, ndim),
        to_shape(strides, ndim)));
  });
}

int mlxs_slice_update_dynamic(
    const mlxs_array* src, const mlxs_array* update, const mlxs_array* start, const int* axes,
    size_t naxes, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::slice_update(src->a, update->a, start->a, std::vector<int>(axes, axes + naxes)));
  });
}

int mlxs_take(
    const mlxs_array* a, const mlxs_array* indices, int axis, int all_axes, mlxs_array** out) {
  return guard([&] {
    *out = wrap(all_axes ? mx::take(a->a, indices->a) : mx::take(a->a, indices->a, axis));
  });
}

int mlxs_take_along_axis(
    const mlxs_array* a, const mlxs_array* indices, int axis, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::take_along_axis(a->a, indices->a, axis)); });
}

int mlxs_pad(
    const mlxs_array* a, const int* axes, const int32_t* low, const int32_t* high, size_t n,
    const mlxs_array* value, const char* mode, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::pad(
        a->a, to_ints(axes, n), to_shape(low, n), to_shape(high, n), value->a,
        std::string(mode)));
  });
}

// --- linear algebra and convolution ---------------------------------------------------------

int mlxs_addmm(
    const mlxs_array* c, const mlxs_array* a, const mlxs_array* b, float alpha, float beta,
    mlxs_array** out) {
  return guard([&] { *out = wrap(mx::addmm(c->a, a->a, b->a, alpha, beta)); });
}

int mlxs_conv2d(
    const mlxs_array* input, const mlxs_array* weight, int stride_h, int stride_w,
    int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::conv2d(
        input->a, weight->a, {stride_h, stride_w}, {pad_h, pad_w}, {dilation_h, dilation_w},
        groups));
  });
}

// --- fast ops -------------------------------------------------------------------------------

int mlxs_rms_norm(const mlxs_array* x, const mlxs_array* weight, float eps, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::fast::rms_norm(x->a, opt(weight), eps)); });
}

int mlxs_layer_norm(
    const mlxs_array* x, const mlxs_array* weight, const mlxs_array* bias, float eps,
    mlxs_array** out) {
  return guard([&] { *out = wrap(mx::fast::layer_norm(x->a, opt(weight), opt(bias), eps)); });
}

int mlxs_rope(
    const mlxs_array* x, int dims, int traditional, int has_base, float base, float scale,
    int offset, const mlxs_array* freqs, mlxs_array** out) {
  return guard([&] {
    std::optional<float> b = has_base ? std::optional<float>(base) : std::nullopt;
    *out = wrap(mx::fast::rope(x->a, dims, traditional != 0, b, scale, offset, opt(freqs)));
  });
}

int mlxs_rope_table(
    const mlxs_array* x, const mlxs_array* cos, const mlxs_array* sin, const mlxs_array* weight,
    float eps, mlxs_array** out) {
  return guard([&] { *out = wrap(mlxs::rope_table(x->a, cos->a, sin->a, opt(weight), eps)); });
}

int mlxs_residual_rms_norm(
    const mlxs_array* x, const mlxs_array* y, const mlxs_array* y_weight, float y_eps,
    const mlxs_array* gate, const mlxs_array* out_weight, float out_eps, const mlxs_array* scale,
    mlxs_vec** out) {
  return guard([&] {
    *out = new mlxs_vec{mlxs::residual_rms_norm(
        opt(x), y->a, opt(y_weight), y_eps, opt(gate), opt(out_weight), out_eps, opt(scale))};
  });
}

int mlxs_rope_dynamic(
    const mlxs_array* x, int dims, int traditional, int has_base, float base, float scale,
    const mlxs_array* offset, const mlxs_array* freqs, mlxs_array** out) {
  return guard([&] {
    std::optional<float> b = has_base ? std::optional<float>(base) : std::nullopt;
    *out = wrap(mx::fast::rope(x->a, dims, traditional != 0, b, scale, offset->a, opt(freqs)));
  });
}

int mlxs_sdpa(
    const mlxs_array* q, const mlxs_array* k, const mlxs_array* v, float scale,
    const char* mask_mode, const mlxs_array* mask, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::fast::scaled_dot_product_attention(
        q->a, k->a, v->a, scale, std::string(mask_mode), opt(mask)));
  });
}

// --- quantization ---------------------------------------------------------------------------

int mlxs_quantize(const mlxs_array* w, int group_size, int bits, const char* mode, mlxs_vec** out) {
  return guard([&] { *out = new mlxs_vec{mx::quantize(w->a, group_size, bits, std::string(mode))}; });
}

int mlxs_dequantize(
    const mlxs_array* w, const mlxs_array* scales, const mlxs_array* biases, int group_size,
    int bits, const char* mode, int dtype, mlxs_array** out) {
  return guard([&] {
    std::optional<mx::Dtype> d = dtype < 0 ? std::nullopt : std::optional(to_dtype(dtype));
    *out = wrap(
        mlxs::dequantize(w->a, scales->a, opt(biases), group_size, bits, std::string(mode), d));
  });
}

int mlxs_quantized_matmul(
    const mlxs_array* x, const mlxs_array* w, const mlxs_array* scales,
    const mlxs_array* biases, int transpose, int group_size, int bits, const char* mode,
    mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::quantized_matmul(
        x->a, w->a, scales->a, opt(biases), transpose != 0, group_size, bits,
        std::string(mode)));
  });
}

int mlxs_to_fp8(const mlxs_array* x, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::to_fp8(x->a)); });
}

int mlxs_from_fp8(const mlxs_array* x, int dtype, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::from_fp8(x->a, to_dtype(dtype))); });
}

namespace {

// cuBLASLt's FP8 kernels read K-contiguous rows of 16-byte multiples and write rows of
// N elements aligned as much.
bool fp8_kernel_runs(const mx::Device& device, int n, int k) {
#ifdef MLXS_CUDA_RUNTIME
  return n % 16 == 0 && k % 16 == 0 && mlxs::has_fp8_hardware(device);
#else
  (void)device, (void)n, (void)k;
  return false;
#endif
}

}  // namespace

int mlxs_fp8_quantize(const mlxs_array* x, mlxs_vec** out) {
  return guard([&] {
    auto [values, scales] = mlxs::fp8_quantize(x->a);
    *out = new mlxs_vec{{values, scales}};
  });
}

int mlxs_fp8_quantize_swiglu(const mlxs_array* gate, const mlxs_array* up, mlxs_vec** out) {
  return guard([&] {
    auto [values, scales] = mlxs::fp8_quantize_swiglu(gate->a, up->a);
    *out = new mlxs_vec{{values, scales}};
  });
}

int mlxs_fp8_matmul(
    const mlxs_array* x, const mlxs_array* x_scale, const mlxs_array* w,
    const mlxs_array* w_scale, int dtype, mlxs_array** out) {
  return guard([&] {
    const mx::array& a = x->a;
    const mx::array& b = w->a;
    const mx::array& sa = x_scale->a;
    const mx::array& sb = w_scale->a;
    if (a.ndim() < 1 || b.ndim() != 2 || a.shape(-1) != b.shape(1) || a.dtype() != mx::uint8 ||
        b.dtype() != mx::uint8) {
      throw std::invalid_argument(
          "fp8_matmul takes uint8 E4M3 rows x [..., K] and w [N, K], found x " +
          mlxs::describe(a) + " and w " + mlxs::describe(b));
    }
    mx::Shape rows(a.shape().begin(), a.shape().end() - 1);
    if (sa.shape() != rows || sb.shape() != mx::Shape{b.shape(0)} ||
        !mx::issubdtype(sa.dtype(), mx::floating) || !mx::issubdtype(sb.dtype(), mx::floating)) {
      throw std::invalid_argument(
          "fp8_matmul takes float scales, one per row of x and of w, found " +
          mlxs::describe(sa) + " and " + mlxs::describe(sb));
    }
    mx::Dtype d = to_dtype(dtype);
    if (!mx::issubdtype(d, mx::floating)) {
      std::ostringstream name;
      name << d;
      throw std::invalid_argument("fp8_matmul writes a floating-point dtype, not " + name.str());
    }
    mx::Shape shape = rows;
    shape.push_back(b.shape(0));
    std::optional<mx::array> product;
#ifdef MLXS_CUDA_RUNTIME
    mx::Stream stream = mx::default_stream(mx::default_device());
    // cuBLASLt takes no empty operands (the composed product of nothing is well defined)
    // and writes half, bfloat16 or single precision.
    bool written = d == mx::float16 || d == mx::bfloat16 || d == mx::float32;
    if (written && a.size() > 0 && b.size() > 0 &&
        fp8_kernel_runs(stream.device, b.shape(0), a.shape(-1))) {
      auto a2 = mx::reshape(a, {-1, a.shape(-1)}, stream);
      auto sa2 = mx::reshape(sa, {-1}, stream);
      if (auto scaled = mlxs::fp8_gemm_scaled(a2, sa2, b, sb, d, stream)) {
        *out = wrap(mx::reshape(*scaled, shape, stream));
        return;
      }
      // Unscaled, products of E4M3 values run past float16's largest (65504) at the
      // widths of a transformer: float16 results are scaled from single precision.
      mx::Dtype unscaled = d == mx::float16 ? mx::float32 : d;
      if (auto raw = mlxs::fp8_gemm(a2, b, unscaled, stream)) {
        product = mx::reshape(*raw, shape, stream);
      }
    }
#endif
    if (!product) {
      product = mx::matmul(
          mx::from_fp8(a, mx::float32), mx::transpose(mx::from_fp8(b, mx::float32)));
    }
    // Scaled in the result's shape, so that MLX's compiler can fuse the scaling with the
    // element-wise operations that follow.
    auto f32 = [](const mx::array& v) { return mx::astype(v, mx::float32); };
    auto scaled = f32(*product) * mx::expand_dims(f32(sa), -1) * f32(sb);
    *out = wrap(mx::astype(scaled, d));
  });
}

int mlxs_fp8_kernel(int n, int k) {
  try {
    return fp8_kernel_runs(mx::default_device(), n, k) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// --- random ---------------------------------------------------------------------------------

int mlxs_random_key(uint64_t seed, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::random::key(seed)); });
}

int mlxs_random_split(const mlxs_array* key, int num, mlxs_array** out) {
  return guard([&] { *out = wrap(mx::random::split(key->a, num)); });
}

int mlxs_random_normal(
    const int32_t* shape, size_t ndim, int dtype, float loc, float scale,
    const mlxs_array* key, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::random::normal(to_shape(shape, ndim), to_dtype(dtype), loc, scale, opt(key)));
  });
}

int mlxs_random_uniform(
    const mlxs_array* low, const mlxs_array* high, const int32_t* shape, size_t ndim,
    int dtype, const mlxs_array* key, mlxs_array** out) {
  return guard([&] {
    *out = wrap(mx::random::uniform(
        low->a, high->a, to_shape(shape, ndim), to_dtype(dtype), opt(key)));
  });
}

// --- compiled functions -------------------------------------------------------------------

int mlxs_compile(
    mlxs_trace_fn trace, void* ctx, void (*release)(void*), int shapeless, mlxs_closure** out) {
  std::shared_ptr<void> owner;
  if (!adopt(ctx, release, owner)) {
    return 1;
  }
  return guard([&] {
    auto fun = [trace, owner](const std::vector<mx::array>& inputs) {
      mlxs_vec in{inputs};
      mlxs_vec outputs;
      if (trace(owner.get(), &in, &outputs) != 0) {
        throw std::runtime_error("the traced function failed");
      }
      return std::move(outputs.v);
    };
    // MLX keys a compiled std::function by its heap address, which a later function can
    // reuse while another thread's cache still holds the old entries. A counter never
    // reuses an id; the top bit keeps clear of the addresses MLX uses for plain functions.
    static std::atomic<std::uintptr_t> next_id{1};
    std::uintptr_t id = (std::uintptr_t{1} << (sizeof(std::uintptr_t) * 8 - 1)) | next_id++;
    auto closure = std::make_unique<mlxs_closure>();
    closure->f = mx::detail::compile(std::move(fun), id, shapeless != 0);
    closure->id = id;
    *out = closure.release();
  });
}

int mlxs_closure_call(mlxs_closure* f, const mlxs_vec* inputs, mlxs_vec** outputs) {
  return guard([&] {
    {
      auto cache = mx::detail::compile_cache();
      std::lock_guard<std::mutex> lock(f->mutex);
      auto same = [&](const mx::detail::CompileCacheWeakPtr& c) {
        return !c.owner_before(cache) && !cache.owner_before(c);
      };
      if (std::none_of(f->caches.begin(), f->caches.end(), same)) {
        f->caches.push_back(cache);
      }
    }
    *outputs = new mlxs_vec{f->f(inputs->v)};
  });
}

void mlxs_closure_free(mlxs_closure* f) {
  try {
    for (const auto& cache : f->caches) {
      mx::detail::compile_erase(cache, f->id);
    }
  } catch (...) {
    // Erasing cannot fail short of memory exhaustion; the entries would only leak.
  }
  delete f;
}

int mlxs_graph_dump(const mlxs_vec* outputs, const char** s, size_t* len) {
  return guard([&] {
    // Nodes are numbered in the order a depth-first walk from the outputs completes them
    // (inputs before their users), so the same graph dumps the same whatever the
    // addresses. The walk keeps its own stack: graphs can be far deeper than the C stack.
    std::unordered_map<std::uintptr_t, int> number;
    std::ostringstream os;
    auto line = [&](const mx::array& a) {
      int n = static_cast<int>(number.size());
      number[a.id()] = n;
      os << "%" << n << " = ";
      if (a.has_primitive()) {
        os << a.primitive().name() << "(";
        const auto& inputs = a.inputs();
        for (size_t i = 0; i < inputs.size(); ++i) {
          os << (i ? ", %" : "%") << number.at(inputs[i].id());
        }
        os << ")";
      } else {
        os << "input";
      }
      os << " : " << a.dtype() << "[";
      for (size_t i = 0; i < a.shape().size(); ++i) {
        os << (i ? ", " : "") << a.shape()[i];
      }
      os << "]\n";
    };
    for (const auto& out : outputs->v) {
      // (node, index of the next input to visit)
      std::vector<std::pair<mx::array, size_t>> stack{{out, 0}};
      while (!stack.empty()) {
        auto& [a, next] = stack.back();
        if (number.count(a.id())) {
          stack.pop_back();
          continue;
        }
        const auto* inputs = a.has_primitive() ? &a.inputs() : nullptr;
        if (inputs && next < inputs->size()) {
          mx::array input = (*inputs)[next++];
          stack.emplace_back(std::move(input), 0);
        } else {
          line(a);
          stack.pop_back();
        }
      }
    }
    os << "return";
    for (size_t i = 0; i < outputs->v.size(); ++i) {
      os << (i ? ", %" : " %") << number.at(outputs->v[i].id());
    }
    os << "\n";
    text_buffer = os.str();
    *s = text_buffer.data();
    *len = text_buffer.size();
  });
}

// --- evaluation and devices -----------------------------------------------------------------

int mlxs_eval(const mlxs_vec* arrays) {
  return guard([&] { mx::eval(arrays->v); });
}

int mlxs_async_eval(const mlxs_vec* arrays) {
  return guard([&] { mx::async_eval(arrays->v); });
}

int mlxs_synchronize(void) {
  return guard([&] { mx::synchronize(); });
}

int mlxs_default_device(int* type, int* index) {
  return guard([&] {
    const mx::Device& d = mx::default_device();
    *type = d.type == mx::Device::gpu ? 1 : 0;
    *index = d.index;
  });
}

int mlxs_set_default_device(int type, int index) {
  return guard([&] { mx::set_default_device(to_device(type, index)); });
}

int mlxs_device_available(int type, int index, int* available) {
  return guard([&] { *available = mx::is_available(to_device(type, index)) ? 1 : 0; });
}

int mlxs_backend(int* backend) {
  // Both functions exist in every build of MLX (as `return false` stubs where the backend
  // is not compiled in) and answer for the library, not for the machine.
  return guard([&] {
    if (mx::cu::is_available()) {
      *backend = MLXS_BACKEND_CUDA;
    } else if (mx::metal::is_available()) {
      *backend = MLXS_BACKEND_METAL;
    } else {
      *backend = MLXS_BACKEND_CPU;
    }
  });
}

int mlxs_device_count(int type, int* count) {
  return guard([&] {
    if (type != 0 && type != 1) {
      throw std::invalid_argument("unknown device type " + std::to_string(type));
    }
    auto kind = type == 0 ? mx::Device::cpu : mx::Device::gpu;
    // MLX's CUDA backend counts devices with cudaGetDeviceCount, which fails (and leaves
    // the count at 0) where there is no driver or no visible device.
    *count = std::max(mx::device_count(kind), 0);
  });
}

int mlxs_device_info(int type, int index, const char** s, size_t* len) {
  return guard([&] {
    const auto& info = mx::device_info(to_device(type, index));
    std::string out;
    for (const auto& [key, value] : info) {
      out += key;
      out += '\0';
      if (const auto* text = std::get_if<std::string>(&value)) {
        out += 's';
        out += '\0';
        out += *text;
      } else {
        out += 'n';
        out += '\0';
        out += std::to_string(std::get<size_t>(value));
      }
      out += '\0';
    }
    text_buffer = std::move(out);
    *s = text_buffer.data();
    *len = text_buffer.size();
  });
}

// --- memory ---------------------------------------------------------------------------------

int mlxs_active_memory(size_t* out) {
  return guard([&] { *out = mx::get_active_memory(); });
}

int mlxs_peak_memory(size_t* out) {
  return guard([&] { *out = mx::get_peak_memory(); });
}

int mlxs_reset_peak_memory(void) {
  return guard([&] { mx::reset_peak_memory(); });
}

int mlxs_cache_memory(size_t* out) {
  return guard([&] { *out = mx::get_cache_memory(); });
}

int mlxs_clear_cache(void) {
  return guard([&] { mx::clear_cache(); });
}

int mlxs_memory_limit(size_t* out) {
  return guard([&] { *out = mx::get_memory_limit(); });
}

int mlxs_set_memory_limit(size_t limit, size_t* previous) {
  return guard([&] { *previous = mx::set_memory_limit(limit); });
}

int mlxs_set_cache_limit(size_t limit, size_t* previous) {
  return guard([&] { *previous = mx::set_cache_limit(limit); });
}

int mlxs_set_wired_limit(size_t limit, size_t* previous) {
  return guard([&] { *previous = mx::set_wired_limit(limit); });
}

// --- version --------------------------------------------------------------------------------

const char* mlxs_version(void) {
  return mx::version();
}

const char* mlxs_blas(void) {
#ifdef MLXS_OPENBLAS
  return openblas_get_config();
#else
  return "MLX's bundled reference BLAS";
#endif
}

}  // extern "C"
