// Fused kernels of our own for MLX's CUDA backend. MLX's compiler fuses element-wise chains
// but stops at reductions and gathers; where a model's hot path is made of those, one
// kernel here does the whole of it. The kernels are CUDA source that jit.cpp compiles with
// NVRTC at first use and keeps on disk for later processes; on other devices the same
// computation is composed of MLX operations.

#include "kernels.h"
#include "jit.h"

#include <cstdio>
#include <stdexcept>
#include <sstream>
#include <string>
#include <vector>

#include "mlx/mlx.h"

namespace mx = mlx::core;

namespace mlxs {

bool has_fp8_hardware(const mx::Device& device) {
  return device.type == mx::Device::gpu && compute_capability(device) >= 89;
}

std::string describe(const mx::array& a) {
  std::ostringstream s;
  s << "[";
  for (int i = 0; i < static_cast<int>(a.ndim()); ++i) {
    s << (i ? ", " : "") << a.shape(i);
  }
  s << "] " << a.dtype();
  return s.str();
}

namespace {

bool on_cuda_gpu() {
  return fused_kernels_enabled() && mx::default_device().type == mx::Device::gpu;
}

std::string float_literal(float v) {
  char literal[64];
  std::snprintf(literal, sizeof literal, "%a", v);
  return literal;
}

void replace(std::string& src, const std::string& what, const std::string& with) {
  for (auto at = src.find(what); at != std::string::npos; at = src.find(what, at + with.size())) {
    src.replace(at, what.size(), with);
  }
}

// Device code shared by the kernels below (kernel_source puts it ahead of each).
constexpr const char* kHeader = R"(
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ inline void load_pack(const T* p, float (&out)[V]) {
  const Pack<T, V> pack = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    out[k] = static_cast<float>(pack.v[k]);
  }
}

template <int V, typename T>
__device__ inline void store_pack(T* p, const float (&in)[V]) {
  Pack<T, V> pack;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    pack.v[k] = static_cast<T>(in[k]);
  }
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

template <typename U>
__device__ inline float at(const U* p, long i) {
  return static_cast<float>(p[i]);
}

struct Add {
  __device__ float operator()(float a, float b) const {
    return a + b;
  }
};

struct Max {
  __device__ float operator()(float a, float b) const {
    return fmaxf(a, b);
  }
};

// `op` over every thread's `v` in the block, for each thread.
template <typename Op>
__device__ inline float block_reduce(float v, float* partial, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    v = op(v, __shfl_xor_sync(0xffffffff, v, offset));
  }
  __syncthreads();
  if (threadIdx.x % 32 == 0) {
    partial[threadIdx.x / 32] = v;
  }
  __syncthreads();
  float total = partial[0];
  for (int w = 1; w < blockDim.x / 32; ++w) {
    total = op(total, partial[w]);
  }
  return total;
}

__device__ inline float block_sum(float v, float* partial) {
  return block_reduce(v, partial, Add());
}

// Two floats as E4M3 bytes, rounded to nearest even and saturated at +-448 (sm_89 on);
// `lo` in the low byte, the first in memory.
__device__ inline unsigned short e4m3x2(float lo, float hi) {
  unsigned short pair;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(hi), "f"(lo));
  return pair;
}

// An E4M3 byte's value (sign, 4 exponent bits of bias 7, 3 mantissa bits; S.1111.111 is
// NaN), in integer operations: GPUs before sm_89 do not convert it.
__device__ inline float e4m3_value(unsigned char b) {
  const unsigned int sign = static_cast<unsigned int>(b & 0x80) << 24;
  const unsigned int e = (b >> 3) & 0xf, m = b & 0x7;
  if (e == 0xf && m == 0x7) {
    return __uint_as_float(0x7fffffffu);
  }
  if (e == 0) {
    return __uint_as_float(sign | __float_as_uint(static_cast<float>(m) * 0x1p-9f));
  }
  return __uint_as_float(sign | ((e + 120) << 23) | (m << 20));
}

// An E8M0 byte's value, 2^(s - 127) (255 is NaN).
__device__ inline float e8m0_value(unsigned char s) {
  if (s == 0xff) {
    return __uint_as_float(0x7fffffffu);
  }
  return s == 0 ? __uint_as_float(0x00400000u)
                : __uint_as_float(static_cast<unsigned int>(s) << 23);
}

// Packs of V consecutive values of a row of an array, as float.
template <typename T>
struct Values {
  const T* x;
  template <int V>
  __device__ void operator()(long i, float (&v)[V]) const {
    load_pack<V>(x + i, v);
  }
};

template <typename T>
__device__ inline float rounded(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// Packs of V consecutive values of `silu(gate) * up` = `gate * sigmoid(gate) * up`, each
// operation as MLX's CUDA kernels compute it in T (its sigmoid from e^|x|, for either sign).
template <typename T>
struct SwiGlu {
  const T* gate;
  const T* up;
  template <int V>
  __device__ void operator()(long i, float (&v)[V]) const {
    float g[V], u[V];
    load_pack<V>(gate + i, g);
    load_pack<V>(up + i, u);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float y = rounded<T>(1.0f / rounded<T>(1.0f + rounded<T>(expf(fabsf(g[k])))));
      const float sigmoid = g[k] < 0.0f ? y : rounded<T>(1.0f - y);
      v[k] = rounded<T>(rounded<T>(g[k] * sigmoid) * u[k]);
    }
  }
};

// Packs of V floats over `s` as E4M3 bytes at q (exact divisions whatever NVRTC's options,
// as the composed path computes them).
template <int V>
__device__ inline void store_e4m3(unsigned char* q, const float (&v)[V], float s) {
  if constexpr (V == 1) {
    *q = static_cast<unsigned char>(e4m3x2(__fdiv_rn(v[0], s), 0.0f) & 0xff);
  } else {
    Pack<unsigned short, V / 2> pairs;
#pragma unroll
    for (int k = 0; k < V; k += 2) {
      pairs.v[k / 2] = e4m3x2(__fdiv_rn(v[k], s), __fdiv_rn(v[k + 1], s));
    }
    *reinterpret_cast<Pack<unsigned short, V / 2>*>(q) = pairs;
  }
}

// One row of K values (packs of V from `load`) by one block of THREADS threads: its largest
// magnitude over 448 is the row's scale, and the values over the scale are stored as E4M3
// bytes. Rows of up to eight packs a thread (a SwiGLU's 10240 values are five packs of
// eight for 256 threads) are read once and held in registers, a SwiGLU's product computed
// once; longer ones are read again, from cache.
template <int V, int K, int THREADS, typename Load>
__device__ void fp8_quantize_row(
    long row, const Load& load, unsigned char* q, float* scale, float* partial) {
  constexpr int PACKS = (K / V + THREADS - 1) / THREADS;
  constexpr bool HELD = PACKS <= 8;
  const long base = row * K;
  unsigned char* qr = q + base;
  float held[HELD ? PACKS : 1][V];
  float amax = 0.0f;
  if constexpr (HELD) {
#pragma unroll
    for (int c = 0; c < PACKS; ++c) {
      const int i = (threadIdx.x + c * THREADS) * V;
      if (i < K) {
        load(base + i, held[c]);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          amax = fmaxf(amax, fabsf(held[c][k]));
        }
      }
    }
  } else {
    for (int i = threadIdx.x * V; i < K; i += THREADS * V) {
      load(base + i, held[0]);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        amax = fmaxf(amax, fabsf(held[0][k]));
      }
    }
  }
  amax = block_reduce(amax, partial, Max());
  const float s = amax > 0.0f ? __fdiv_rn(amax, 448.0f) : 1.0f;
  if (threadIdx.x == 0) {
    scale[row] = s;
  }
  if constexpr (HELD) {
#pragma unroll
    for (int c = 0; c < PACKS; ++c) {
      const int i = (threadIdx.x + c * THREADS) * V;
      if (i < K) {
        store_e4m3<V>(qr + i, held[c], s);
      }
    }
  } else {
    for (int i = threadIdx.x * V; i < K; i += THREADS * V) {
      load(base + i, held[0]);
      store_e4m3<V>(qr + i, held[0], s);
    }
  }
}

// One row of D channels by one block of THREADS threads, each holding its packs of V
// channels in registers from the first read to the last write; the norms' weights and the
// modulations are read in packs of V too.
template <int V, int D, int THREADS, bool RESIDUAL, bool GATE, bool OUT, bool SCALE,
          typename T, typename TW, typename TG, typename TO, typename TS>
__device__ void residual_rms_norm_row(
    long row, long tokens, const T* x, const T* y, const TW* y_weight, const TG* gate,
    const TO* out_weight, const TS* scale, T* h, T* o, float y_eps, float out_eps,
    float* partial) {
  constexpr int PACKS = (D / V + THREADS - 1) / THREADS;
  const long base = row * D;
  const long item = (row / tokens) * D;
  float v[PACKS][V];
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < PACKS; ++c) {
    const int i = (threadIdx.x + c * THREADS) * V;
    if (i < D) {
      load_pack<V>(y + base + i, v[c]);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        ss += v[c][k] * v[c][k];
      }
    }
  }
  if constexpr (RESIDUAL) {
    const float inv = rsqrtf(block_sum(ss, partial) / D + y_eps);
    ss = 0.0f;
#pragma unroll
    for (int c = 0; c < PACKS; ++c) {
      const int i = (threadIdx.x + c * THREADS) * V;
      if (i < D) {
        float xs[V], w[V], g[V];
        load_pack<V>(x + base + i, xs);
        load_pack<V>(y_weight + i, w);
        if constexpr (GATE) {
          load_pack<V>(gate + item + i, g);
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
          float u = v[c][k] * inv * w[k];
          if constexpr (GATE) {
            u *= g[k];
          }
          // The stream is stored in T; the next norm reads what was stored.
          v[c][k] = rounded<T>(xs[k] + u);
          ss += v[c][k] * v[c][k];
        }
        store_pack<V>(h + base + i, v[c]);
      }
    }
  }
  if constexpr (OUT) {
    const float inv = rsqrtf(block_sum(ss, partial) / D + out_eps);
#pragma unroll
    for (int c = 0; c < PACKS; ++c) {
      const int i = (threadIdx.x + c * THREADS) * V;
      if (i < D) {
        float out[V], w[V], m[V];
        load_pack<V>(out_weight + i, w);
        if constexpr (SCALE) {
          load_pack<V>(scale + item + i, m);
        }
#pragma unroll
        for (int k = 0; k < V; ++k) {
          out[k] = v[c][k] * inv * w[k];
          if constexpr (SCALE) {
            out[k] *= m[k];
          }
        }
        store_pack<V>(o + base + i, out);
      }
    }
  }
}
// One row of D channels (one head of one token) by LANES lanes of a warp (a power of two
// up to 32: a warp holds 32 / LANES rows), each lane holding its packs of V channels (V
// even: whole pairs); the lanes reduce the sum of squares by shuffles. The table row is the
// token's, shared by its heads. PACKED reads the tables and the weight in packs of V too
// (their pointers aligned for it), else value by value. Every lane of the warp takes part
// in the shuffles: a lane past the last row (`valid` false) computes that row again but
// stores nothing.
template <int V, int D, int LANES, bool NORM, bool PACKED, typename T, typename TC,
          typename TS, typename TW>
__device__ void rope_row(
    long row, int lane, bool valid, long heads, const T* x, const TC* cos_t, const TS* sin_t,
    const TW* weight, T* out, float eps) {
  constexpr int PACKS = (D / V + LANES - 1) / LANES;
  const long base = row * D;
  const long t = (row / heads) * D;
  auto load = [](const auto* p, float (&v)[V]) {
    if constexpr (PACKED) {
      load_pack<V>(p, v);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v[k] = at(p, k);
      }
    }
  };
  float v[PACKS][V];
  float ss = 0.0f;
#pragma unroll
  for (int c = 0; c < PACKS; ++c) {
    const int i = (lane + LANES * c) * V;
    if (i < D) {
      load_pack<V>(x + base + i, v[c]);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        ss += v[c][k] * v[c][k];
      }
    }
  }
  float inv = 1.0f;
  if constexpr (NORM) {
#pragma unroll
    for (int offset = LANES / 2; offset > 0; offset /= 2) {
      ss += __shfl_xor_sync(0xffffffff, ss, offset);
    }
    inv = rsqrtf(ss / D + eps);
  }
#pragma unroll
  for (int c = 0; c < PACKS; ++c) {
    const int i = (lane + LANES * c) * V;
    if (valid && i < D) {
      float cs[V], sn[V], w[V], o[V];
      load(cos_t + t + i, cs);
      load(sin_t + t + i, sn);
      if constexpr (NORM) {
        load(weight + i, w);
      }
#pragma unroll
      for (int k = 0; k < V; k += 2) {
        float a = v[c][k] * inv;
        float b = v[c][k + 1] * inv;
        if constexpr (NORM) {
          a *= w[k];
          b *= w[k + 1];
        }
        o[k] = a * cs[k] + b * sn[k];
        o[k + 1] = b * cs[k + 1] + a * sn[k + 1];
      }
      store_pack<V>(out + base + i, o);
    }
  }
}
)";

// Packs of 16 bytes (8 channels of bfloat16, 4 of float32) where the head size and the
// pointers allow, else single pairs with the tables read value by value.
KernelSpec rope_table_spec(bool norm, float eps) {
  std::string src = R"(
  const long thread = (long)blockIdx.x * blockDim.x + threadIdx.x;
  const long rows = n_rows;
  const long heads = n_heads;
  const long row = thread / LANES;
  // Whole warps return together (LANES divides 32); the rest take part in the shuffles.
  if (row - (threadIdx.x % 32) / LANES >= rows) {
    return;
  }
  const bool valid = row < rows;
  const long r = valid ? row : rows - 1;
  const int lane = threadIdx.x % LANES;
  const auto* w = WEIGHT;
  const auto aligned = [](const void* p, unsigned long bytes) {
    return reinterpret_cast<unsigned long>(p) % bytes == 0;
  };
  constexpr unsigned long DATA = VEC * sizeof(T);
  if (VEC > 2 && aligned(x, DATA) && aligned(out, DATA) && aligned(cos_t, VEC * sizeof(*cos_t)) &&
      aligned(sin_t, VEC * sizeof(*sin_t)) && (!NORM || aligned(w, VEC * sizeof(*w)))) {
    rope_row<VEC, D, LANES, NORM, true>(r, lane, valid, heads, x, cos_t, sin_t, w, out, EPS);
  } else {
    rope_row<2, D, LANES, NORM, false>(r, lane, valid, heads, x, cos_t, sin_t, w, out, EPS);
  }
)";
  replace(src, "WEIGHT", norm ? "weight" : "static_cast<const T*>(nullptr)");
  replace(src, "EPS", float_literal(eps));
  std::vector<std::string> inputs{"x", "cos_t", "sin_t"};
  if (norm) {
    inputs.push_back("weight");
  }
  return {
      norm ? "mlxs_rms_norm_rope_table" : "mlxs_rope_table", inputs, {"out"},
      {"n_rows", "n_heads"}, kHeader, src};
}

// The largest head the kernel's registers hold (16 channels a lane).
constexpr int kMaxKernelHeadDim = 512;

// Channels a lane of the RoPE kernel reads at once (16 bytes, else a pair), and lanes a row:
// enough for one pack each, a power of two up to a warp.
std::pair<int, int> rope_layout(int d, mx::Dtype dtype) {
  int pack = 16 / static_cast<int>(mx::size_of(dtype));
  int vec = d % pack == 0 ? pack : 2;
  int lanes = 1;
  while (lanes < 32 && lanes * vec < d) {
    lanes *= 2;
  }
  return {vec, lanes};
}

bool kernel_fits(const mx::array& x, const mx::array& cos, const mx::array& sin) {
  if (!on_cuda_gpu() || x.ndim() != 4 || x.size() == 0 ||
      !mx::issubdtype(x.dtype(), mx::floating)) {
    return false;
  }
  int d = x.shape(3);
  mx::Shape table{x.shape(0), x.shape(1), 1, d};
  double threads = 32.0 * x.shape(0) * x.shape(1) * x.shape(2);  // at most 32 lanes a row
  return d % 2 == 0 && d <= kMaxKernelHeadDim && cos.shape() == table &&
      sin.shape() == table && threads < 2147483647.0;
}

mx::array rope_table_kernel(
    const mx::array& x, const mx::array& cos, const mx::array& sin,
    const std::optional<mx::array>& weight, float eps) {
  bool norm = weight.has_value();
  std::vector<mx::array> inputs{x, cos, sin};
  if (norm) {
    inputs.push_back(*weight);
  }
  int d = x.shape(3);
  auto [vec, lanes] = rope_layout(d, x.dtype());
  int rows = x.shape(0) * x.shape(1) * x.shape(2);
  return run_kernel(
      rope_table_spec(norm, eps), inputs, {x.shape()}, {x.dtype()},
      {{"D", d}, {"VEC", vec}, {"LANES", lanes}, {"NORM", norm}, {"T", x.dtype()}},
      {rows, x.shape(2)}, {lanes * rows, 1, 1}, {128, 1, 1})[0];
}

mx::array rope_table_composed(
    const mx::array& x, const mx::array& cos, const mx::array& sin,
    const std::optional<mx::array>& weight, float eps) {
  mx::array y = weight ? mx::fast::rms_norm(x, weight, eps) : x;
  int d = y.shape(-1);
  std::vector<int> swap(d);
  for (int i = 0; i < d; ++i) {
    swap[i] = i ^ 1;
  }
  mx::array swapped = mx::take(y, mx::array(swap.data(), {d}, mx::int32), -1);
  mx::array rotated = mx::astype(y, mx::float32) * cos + mx::astype(swapped, mx::float32) * sin;
  return mx::astype(rotated, x.dtype());
}

constexpr int kResidualThreads = 256;
// Rows up to this many channels fit the kernel's registers (32 a thread).
constexpr int kMaxResidualDim = 32 * kResidualThreads;

// Packs of 16 bytes where the rows allow them, checked on the pointers at run time (MLX's
// small buffers may be less aligned), else channel by channel.
KernelSpec residual_rms_norm_spec(
    bool residual, bool gate, bool out, bool scale, float y_eps, float out_eps) {
  std::string src = R"(
  __shared__ float partial[32];
  T* h_out = H_OUT;
  T* o_out = O_OUT;
  const unsigned long addresses = ADDRESSES;
  if (VEC > 1 && addresses % 16 == 0) {
    residual_rms_norm_row<VEC, D, THREADS, RESIDUAL, GATE, OUT, SCALE>(
        blockIdx.x, tokens, x, y, y_weight, gate, out_weight, scale, h_out, o_out,
        Y_EPS, OUT_EPS, partial);
  } else {
    residual_rms_norm_row<1, D, THREADS, RESIDUAL, GATE, OUT, SCALE>(
        blockIdx.x, tokens, x, y, y_weight, gate, out_weight, scale, h_out, o_out,
        Y_EPS, OUT_EPS, partial);
  }
)";
  // The pointers read or written in packs: absent inputs are never read.
  std::string addresses = "reinterpret_cast<unsigned long>(y)";
  auto address = [&](bool present, const char* name) {
    if (present) {
      addresses += std::string(" | reinterpret_cast<unsigned long>(") + name + ")";
    }
  };
  address(residual, "x");
  address(residual, "y_weight");
  address(residual, "h_out");
  address(gate, "gate");
  address(out, "out_weight");
  address(out, "o_out");
  address(scale, "scale");
  replace(src, "ADDRESSES", addresses);
  replace(src, "H_OUT", residual ? "h" : "static_cast<T*>(nullptr)");
  replace(src, "O_OUT", out ? "o" : "static_cast<T*>(nullptr)");
  replace(src, "Y_EPS", float_literal(y_eps));
  replace(src, "OUT_EPS", float_literal(out_eps));
  std::vector<std::string> outputs;
  if (residual) {
    outputs.push_back("h");
  }
  if (out) {
    outputs.push_back("o");
  }
  return {
      "mlxs_residual_rms_norm", {"x", "y", "y_weight", "gate", "out_weight", "scale"}, outputs,
      {"tokens"}, kHeader, src};
}

constexpr int kFp8Threads = 256;

// Packs of 16 bytes of input where the row length and the pointers allow, else value by
// value. The input is x, or `silu(gate) * up` for a SwiGLU's.
KernelSpec fp8_quantize_spec(bool swiglu) {
  std::string src = R"(
  __shared__ float partial[32];
  const unsigned long addresses = ADDRESSES;
  if (VEC > 1 && addresses % 16 == 0 && reinterpret_cast<unsigned long>(q) % VEC == 0) {
    fp8_quantize_row<VEC, K, THREADS>(blockIdx.x, LOAD, q, scale, partial);
  } else {
    fp8_quantize_row<1, K, THREADS>(blockIdx.x, LOAD, q, scale, partial);
  }
)";
  replace(
      src, "ADDRESSES",
      swiglu ? "reinterpret_cast<unsigned long>(gate) | reinterpret_cast<unsigned long>(up)"
             : "reinterpret_cast<unsigned long>(x)");
  replace(src, "LOAD", swiglu ? "(SwiGlu<T>{gate, up})" : "(Values<T>{x})");
  return {
      swiglu ? "mlxs_fp8_quantize_swiglu" : "mlxs_fp8_quantize",
      swiglu ? std::vector<std::string>{"gate", "up"} : std::vector<std::string>{"x"},
      {"q", "scale"}, {}, kHeader, src};
}

void check_rows(const char* op, const mx::array& x) {
  if (x.ndim() == 0 || !mx::issubdtype(x.dtype(), mx::floating)) {
    throw std::invalid_argument(
        std::string("[") + op +
        "] takes a floating-point array with rows along its last axis, found " + describe(x));
  }
}

mx::Shape rows_shape(const mx::array& x) {
  return mx::Shape(x.shape().begin(), x.shape().end() - 1);
}

// Whether the quantization kernel takes rows of x: non-empty, on a GPU that converts to
// E4M3, in a dtype it reads, one block per row within CUDA's grid.
bool fp8_kernel_fits(const mx::array& x) {
  double rows = static_cast<double>(x.size()) / x.shape(-1);
  return x.size() > 0 && on_cuda_gpu() && has_fp8_hardware(mx::default_device()) &&
      x.dtype() != mx::float64 && rows * kFp8Threads < 2147483647.0;
}

// The quantization kernel over the rows of `inputs` (x, or a SwiGLU's gate and up).
std::pair<mx::array, mx::array> fp8_quantize_kernel(const std::vector<mx::array>& inputs) {
  const mx::array& x = inputs[0];
  bool swiglu = inputs.size() == 2;
  int k = x.shape(-1);
  int rows = static_cast<int>(x.size() / k);
  int pack = 16 / static_cast<int>(mx::size_of(x.dtype()));
  auto outs = run_kernel(
      fp8_quantize_spec(swiglu), inputs, {x.shape(), rows_shape(x)}, {mx::uint8, mx::float32},
      {{"K", k}, {"VEC", k % pack == 0 ? pack : 1}, {"THREADS", kFp8Threads}, {"T", x.dtype()}},
      {}, {rows * kFp8Threads, 1, 1}, {kFp8Threads, 1, 1});
  return {outs[0], outs[1]};
}

// A per-item modulation that broadcasts as [B, 1, D], or none.
bool modulation_fits(const std::optional<mx::array>& m, const mx::array& y) {
  return !m || m->shape() == mx::Shape{y.shape(0), 1, y.shape(2)};
}

// A norm's weight of one value per channel, or none (MLX's own norm reports the others).
bool weight_fits(const std::optional<mx::array>& w, const mx::array& y) {
  return !w || w->shape() == mx::Shape{y.shape(2)};
}

// The kernel writes y's dtype, which is what MLX's type promotion gives only when every
// operand has it.
bool dtype_fits(const std::optional<mx::array>& a, const mx::array& y) {
  return !a || a->dtype() == y.dtype();
}

}  // namespace

bool fused_kernels_enabled() {
#ifdef MLXS_CUDA_RUNTIME
  static const bool enabled = [] {
    const char* v = std::getenv("MLX_RS_FUSED_KERNELS");
    return mx::cu::is_available() && !(v && std::string(v) == "0");
  }();
  return enabled;
#else
  // jit.cpp compiles the kernels with NVRTC, whose header a build without CUDA's lacks.
  return false;
#endif
}

std::vector<mx::array> residual_rms_norm(
    const std::optional<mx::array>& x, const mx::array& y,
    const std::optional<mx::array>& y_weight, float y_eps, const std::optional<mx::array>& gate,
    const std::optional<mx::array>& out_weight, float out_eps,
    const std::optional<mx::array>& scale) {
  if (!x && !out_weight) {
    throw std::invalid_argument("[residual_rms_norm] neither a residual nor a norm to compute");
  }
  if (x && x->shape() != y.shape()) {
    throw std::invalid_argument(
        "[residual_rms_norm] the residual " + describe(*x) + " and the sublayer's output " +
        describe(y) + " differ in shape");
  }
  bool fits = on_cuda_gpu() && y.ndim() == 3 && y.size() > 0 &&
      mx::issubdtype(y.dtype(), mx::floating) &&
      dtype_fits(x, y) && dtype_fits(y_weight, y) && dtype_fits(gate, y) &&
      dtype_fits(out_weight, y) && dtype_fits(scale, y) && modulation_fits(gate, y) &&
      modulation_fits(scale, y) && (!x || y_weight) && weight_fits(y_weight, y) &&
      weight_fits(out_weight, y) && y.shape(2) <= kMaxResidualDim &&
      static_cast<double>(y.shape(0)) * y.shape(1) * kResidualThreads < 2147483647.0;
  if (!fits) {
    std::vector<mx::array> outs;
    mx::array h = y;
    if (x) {
      mx::array normed = mx::fast::rms_norm(y, y_weight, y_eps);
      h = *x + (gate ? *gate * normed : normed);
      outs.push_back(h);
    }
    if (out_weight) {
      mx::array o = mx::fast::rms_norm(h, out_weight, out_eps);
      outs.push_back(scale ? o * *scale : o);
    }
    return outs;
  }
  bool residual = x.has_value(), out = out_weight.has_value();
  mx::array one = mx::array(1.0f);
  // Absent inputs are a scalar the kernel never reads.
  std::vector<mx::array> inputs{
      residual ? *x : y,       y, residual ? *y_weight : one, gate ? *gate : one,
      out ? *out_weight : one, scale ? *scale : one};
  KernelSpec spec =
      residual_rms_norm_spec(residual, gate.has_value(), out, scale.has_value(), y_eps, out_eps);
  int rows = y.shape(0) * y.shape(1);
  int d = y.shape(2);
  int pack = 16 / static_cast<int>(mx::size_of(y.dtype()));
  std::vector<mx::Shape> shapes(spec.outputs.size(), y.shape());
  std::vector<mx::Dtype> dtypes(spec.outputs.size(), y.dtype());
  return run_kernel(
      spec, inputs, shapes, dtypes,
      {{"D", d},
       {"VEC", d % pack == 0 ? pack : 1},
       {"THREADS", kResidualThreads},
       {"RESIDUAL", residual},
       {"GATE", gate.has_value()},
       {"OUT", out},
       {"SCALE", scale.has_value()},
       {"T", y.dtype()}},
      {y.shape(1)}, {rows * kResidualThreads, 1, 1}, {kResidualThreads, 1, 1});
}

// Sixteen weights (16 bytes of w, within one group) a thread, as MLX's kernels compute
// them: affine in the scales' dtype, `scale * q + bias`; mxfp8 in float32, the E4M3 value
// times the power-of-two scale, rounded once to T.
KernelSpec dequantize_spec(bool affine) {
  std::string src = R"(
  // w's words hold four weights each.
  const long size = 4L * words;
  const long i = (static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x) * 16;
  if (i >= size) {
    return;
  }
  const unsigned char* bytes = reinterpret_cast<const unsigned char*>(w) + i;
  Pack<unsigned char, 16> q;
  if (reinterpret_cast<unsigned long>(bytes) % 16 == 0) {
    q = *reinterpret_cast<const Pack<unsigned char, 16>*>(bytes);
  } else {
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      q.v[k] = bytes[k];
    }
  }
  const long g = i / GROUP;
  Pack<T, 16> v;
  VALUES
  *reinterpret_cast<Pack<T, 16>*>(out + i) = v;
)";
  replace(
      src, "VALUES",
      affine ? R"(const T scale = scales[g];
  const T bias = biases[g];
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    v.v[k] = scale * static_cast<T>(q.v[k]) + bias;
  })"
             : R"(const float scale = e8m0_value(scales[g]);
#pragma unroll
  for (int k = 0; k < 16; ++k) {
    v.v[k] = static_cast<T>(scale * e4m3_value(q.v[k]));
  })");
  std::vector<std::string> inputs{"w", "scales"};
  if (affine) {
    inputs.push_back("biases");
  }
  return {
      affine ? "mlxs_dequantize_affine8" : "mlxs_dequantize_mxfp8", inputs, {"out"}, {"words"},
      kHeader, src};
}

constexpr int kDequantizeThreads = 256;

mx::array dequantize(
    const mx::array& w, const mx::array& scales, const std::optional<mx::array>& biases,
    int group_size, int bits, const std::string& mode, std::optional<mx::Dtype> dtype) {
  // MLX's op checks the operands and says what it computes; lazy, it costs nothing unused.
  mx::array reference =
      mx::dequantize(w, scales, biases, group_size, bits, mode, std::nullopt, dtype);
  bool affine = mode == "affine";
  bool fits = on_cuda_gpu() && bits == 8 && (affine || mode == "mxfp8") &&
      group_size % 16 == 0 && reference.size() > 0 && reference.size() < (1u << 31) &&
      (reference.dtype() == mx::bfloat16 || reference.dtype() == mx::float16 ||
       reference.dtype() == mx::float32) &&
      (!affine ||
       (biases && reference.dtype() == scales.dtype() && biases->dtype() == scales.dtype()));
  if (!fits) {
    return reference;
  }
  std::vector<mx::array> inputs{w, scales};
  if (affine) {
    inputs.push_back(*biases);
  }
  int size = static_cast<int>(reference.size());
  return run_kernel(
      dequantize_spec(affine), inputs, {reference.shape()}, {reference.dtype()},
      {{"GROUP", group_size}, {"T", reference.dtype()}}, {static_cast<int>(w.size())},
      {size / 16, 1, 1}, {kDequantizeThreads, 1, 1})[0];
}

std::pair<mx::array, mx::array> fp8_quantize(const mx::array& x) {
  check_rows("fp8_quantize", x);
  if (x.size() == 0) {
    // No rows, or rows of nothing: a row of nothing is a row of zeros, whose scale is 1.
    return {mx::zeros(x.shape(), mx::uint8), mx::ones(rows_shape(x), mx::float32)};
  }
  if (fp8_kernel_fits(x)) {
    return fp8_quantize_kernel({x});
  }
  // As the kernel computes it: the largest magnitude passes NaNs over (fmaxf), and what
  // divides to NaN (a NaN, or an infinity over an infinite scale) is E4M3's NaN, 0x7f,
  // where MLX's to_fp8 would saturate it to 448.
  mx::array x32 = mx::astype(x, mx::float32);
  mx::array magnitude = mx::abs(x32);
  mx::array amax =
      mx::max(mx::where(mx::isnan(magnitude), mx::array(0.0f), magnitude), -1, true);
  mx::array scale = mx::where(amax > 0.0f, amax / 448.0f, mx::array(1.0f));
  mx::array scaled = x32 / scale;
  mx::array q = mx::where(
      mx::isnan(scaled), mx::array(static_cast<uint8_t>(0x7f)), mx::to_fp8(scaled));
  return {q, mx::squeeze(scale, -1)};
}

std::pair<mx::array, mx::array> fp8_quantize_swiglu(const mx::array& gate, const mx::array& up) {
  check_rows("fp8_quantize_swiglu", gate);
  if (gate.shape() != up.shape() || gate.dtype() != up.dtype()) {
    throw std::invalid_argument(
        "[fp8_quantize_swiglu] the gate " + describe(gate) + " and the up projection " +
        describe(up) + " differ in shape or dtype");
  }
  if (fp8_kernel_fits(gate)) {
    return fp8_quantize_kernel({gate, up});
  }
  return fp8_quantize(mx::multiply(mx::multiply(gate, mx::sigmoid(gate)), up));
}

mx::array rope_table(
    const mx::array& x, const mx::array& cos, const mx::array& sin,
    const std::optional<mx::array>& weight, float eps) {
  if (x.ndim() == 0 || x.shape(-1) % 2 != 0) {
    throw std::invalid_argument(
        "[rope_table] the last axis holds pairs: its length must be even, found " +
        describe(x));
  }
  if (weight && (weight->ndim() != 1 || weight->shape(0) != x.shape(-1))) {
    throw std::invalid_argument(
        "[rope_table] the norm's weight must be [" + std::to_string(x.shape(-1)) +
        "], one per channel of a head");
  }
  if (kernel_fits(x, cos, sin)) {
    return rope_table_kernel(x, cos, sin, weight, eps);
  }
  return rope_table_composed(x, cos, sin, weight, eps);
}

}  // namespace mlxs
