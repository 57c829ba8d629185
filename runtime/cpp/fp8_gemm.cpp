// FP8 (E4M3) matrix products on NVIDIA GPUs, as an MLX primitive that calls cuBLASLt: the
// rate Hopper's tensor cores run FP8 at is twice bfloat16's, and MLX 0.32's own FP8 product
// (qqmm) needs compute capability 10. Compiled only into CUDA builds that found CUDA's
// headers (runtime/build.rs); cuBLASLt is the copy libmlx.so already loaded, reached with
// dlopen so that binaries link nothing MLX does not.

#include "fp8_gemm.h"
#include "cuda_library.h"
#include "device_memory.h"
#include "kernels.h"

#include <cublasLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"
#include "mlx/primitives.h"

namespace mx = mlx::core;

namespace mlxs {
namespace {

// The cuBLASLt entry points this file calls.
struct Lt {
  decltype(&cublasLtCreate) create;
  decltype(&cublasLtMatmulDescCreate) desc_create;
  decltype(&cublasLtMatmulDescSetAttribute) desc_set;
  decltype(&cublasLtMatrixLayoutCreate) layout_create;
  decltype(&cublasLtMatmulPreferenceCreate) pref_create;
  decltype(&cublasLtMatmulPreferenceSetAttribute) pref_set;
  decltype(&cublasLtMatmulPreferenceDestroy) pref_destroy;
  decltype(&cublasLtMatmulDescDestroy) desc_destroy;
  decltype(&cublasLtMatrixLayoutDestroy) layout_destroy;
  decltype(&cublasLtMatmulAlgoGetHeuristic) heuristic;
  decltype(&cublasLtMatmul) matmul;
  cublasLtHandle_t handle = nullptr;
};

void check(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(
        std::string("[fp8_matmul] ") + what + " failed with cuBLAS status " +
        std::to_string(static_cast<int>(status)));
  }
}

const Lt& lt() {
  static const Lt lt = [] {
    CudaLibrary lib("libcublasLt.so.13", "fp8_matmul");
    Lt l;
    lib.bind(l.create, "cublasLtCreate");
    lib.bind(l.desc_create, "cublasLtMatmulDescCreate");
    lib.bind(l.desc_set, "cublasLtMatmulDescSetAttribute");
    lib.bind(l.layout_create, "cublasLtMatrixLayoutCreate");
    lib.bind(l.pref_create, "cublasLtMatmulPreferenceCreate");
    lib.bind(l.pref_set, "cublasLtMatmulPreferenceSetAttribute");
    lib.bind(l.pref_destroy, "cublasLtMatmulPreferenceDestroy");
    lib.bind(l.desc_destroy, "cublasLtMatmulDescDestroy");
    lib.bind(l.layout_destroy, "cublasLtMatrixLayoutDestroy");
    lib.bind(l.heuristic, "cublasLtMatmulAlgoGetHeuristic");
    lib.bind(l.matmul, "cublasLtMatmul");
    check(l.create(&l.handle), "cublasLtCreate");
    return l;
  }();
  return lt;
}

// Hopper's recommended cuBLAS workspace.
constexpr uint64_t kWorkspace = 32u << 20;

// Where the row and channel scales are applied: in the epilogue by cuBLASLt's outer-vector
// scaling where it has a kernel for the GPU (Hopper has, from cuBLAS 12.9: on the H200 it
// costs 2-4% over the unscaled product), else by the caller after the product.
enum class Scaling { Outer, After };

// The descriptors and algorithm of one product shape, made once. Row-major
// out[M, N] = x[M, K] · w[N, K]ᵀ is column-major outᵀ = w · xᵀ: A = w (transposed), B = x,
// the "TN" layout cuBLASLt's FP8 kernels require.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulHeuristicResult_t algo{};
  // Held from setting an outer-scaled product's scale pointers in `desc` to its launch:
  // products of one shape share the plan.
  std::unique_ptr<std::mutex> launch = std::make_unique<std::mutex>();

  // Frees what was made of a plan cuBLASLt has no kernel for (found plans live as long as
  // the process).
  void release(const Lt& l) {
    if (desc) {
      l.desc_destroy(desc);
    }
    for (auto layout : {a, b, d}) {
      if (layout) {
        l.layout_destroy(layout);
      }
    }
  }
};

// Fills `p` with the descriptors of the product and cuBLASLt's algorithm for it; false
// where cuBLASLt has no kernel for it on this GPU. Throws on any other failure.
bool find_algorithm(const Lt& l, Plan& p, int m, int n, int k, mx::Dtype out, Scaling scaling) {
  check(l.desc_create(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  cublasOperation_t t = CUBLAS_OP_T, no = CUBLAS_OP_N;
  check(l.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof t), "setting TRANSA");
  check(l.desc_set(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no, sizeof no), "setting TRANSB");
  // Accumulating in the tensor cores' own precision between K blocks: what inference
  // libraries do for FP8 (8-11% faster than promoting to single precision at the DiT's
  // shapes on the H200), with the error reported against bfloat16 by the benchmark.
  int8_t fast = 1;
  check(l.desc_set(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof fast), "FAST_ACCUM");
  if (scaling == Scaling::Outer) {
    cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    check(l.desc_set(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode), "A_SCALE_MODE");
    check(l.desc_set(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode), "B_SCALE_MODE");
    // The heuristic answers a description whose scale pointers are unset with "invalid
    // value", not with its outer-vector kernels: it is asked with placeholders, and each
    // launch sets the real pointers, once the arrays exist. The heuristic never reads
    // through them.
    alignas(256) static const float placeholder = 1.0f;
    const void* scale = &placeholder;
    for (auto ptr : {CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER}) {
      check(l.desc_set(p.desc, ptr, &scale, sizeof scale), "setting a scale pointer");
    }
  }
  cudaDataType_t d_type = out == mx::float16 ? CUDA_R_16F
      : out == mx::float32                   ? CUDA_R_32F
                                             : CUDA_R_16BF;
  check(l.layout_create(&p.a, CUDA_R_8F_E4M3, k, n, k), "layout of w");
  check(l.layout_create(&p.b, CUDA_R_8F_E4M3, k, m, k), "layout of x");
  check(l.layout_create(&p.d, d_type, n, m, n), "layout of the output");
  cublasLtMatmulPreference_t pref;
  check(l.pref_create(&pref), "cublasLtMatmulPreferenceCreate");
  if (cublasStatus_t set = l.pref_set(
          pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspace, sizeof kWorkspace);
      set != CUBLAS_STATUS_SUCCESS) {
    l.pref_destroy(pref);
    check(set, "workspace preference");
  }
  int found = 0;
  cublasStatus_t status =
      l.heuristic(l.handle, p.desc, p.a, p.b, p.d, p.d, pref, 1, &p.algo, &found);
  l.pref_destroy(pref);
  // cuBLASLt can say "invalid value" for a scaling it has no kernel for (as on the H200
  // with the pointers unset), so a scaled plan refused either way scales after instead.
  bool refused = status == CUBLAS_STATUS_NOT_SUPPORTED ||
      (scaling == Scaling::Outer && status == CUBLAS_STATUS_INVALID_VALUE);
  if (refused || (status == CUBLAS_STATUS_SUCCESS && found == 0)) {
    return false;
  }
  check(status, "cublasLtMatmulAlgoGetHeuristic");
  return true;
}

// A plan, or nullptr where cuBLASLt has no kernel for it on this GPU.
const Plan* plan(int m, int n, int k, mx::Dtype out, Scaling scaling) {
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int, int, Scaling>, std::optional<Plan>> plans;
  std::lock_guard lock(mutex);
  auto key = std::make_tuple(m, n, k, static_cast<int>(out.val()), scaling);
  if (auto found = plans.find(key); found != plans.end()) {
    return found->second ? &*found->second : nullptr;
  }
  const Lt& l = lt();
  Plan p;
  try {
    if (!find_algorithm(l, p, m, n, k, out, scaling)) {
      p.release(l);
      plans.emplace(key, std::nullopt);
      return nullptr;
    }
  } catch (...) {
    p.release(l);
    throw;
  }
  return &*plans.emplace(key, std::move(p)).first->second;
}

// x [M, K] · w [N, K]ᵀ for E4M3 bytes, times x_scale [M] and w_scale [N] (inputs 2 and 3)
// when the scaling is Outer; the last two inputs are the output's buffer and the workspace.
class Fp8Matmul : public mx::UnaryPrimitive {
 public:
  Fp8Matmul(mx::Stream stream, Scaling scaling) : mx::UnaryPrimitive(stream), scaling_(scaling) {}

  void eval_cpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[fp8_matmul] the FP8 kernel runs on CUDA GPUs only");
  }

  void eval_gpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    int m = x.shape(0), k = x.shape(1), n = w.shape(0);
    const Plan* p = plan(m, n, k, out.dtype(), scaling_);
    if (!p) {
      // fp8_gemm checked the plan when it built the graph.
      throw std::runtime_error("[fp8_matmul] cuBLASLt has no FP8 kernel for this product");
    }
    auto& encoder = mx::cu::get_command_encoder(stream());
    const mx::array& workspace = inputs.back();
    // The buffer is this product's alone (compile merges no custom kernels); were it ever
    // shared, the second product to run allocates its own rather than overwrite the first's.
    const mx::array& buffer = inputs[inputs.size() - 2];
    bool taken = buffer.data_shared_ptr().use_count() > 2;  // > the buffer's own and this copy
    if (taken) {
      out.set_data(mx::allocator::malloc(out.nbytes()));
    } else {
      out.copy_shared_buffer(buffer);
    }
    // cuBLASLt wants the workspace 256-byte aligned; MLX's small buffers are not.
    size_t bytes = p->algo.workspaceSize;
    auto base = reinterpret_cast<uintptr_t>(mx::gpu_ptr<void>(workspace));
    void* aligned = reinterpret_cast<void*>((base + 255) & ~uintptr_t{255});
    for (size_t i = 0; i + 2 < inputs.size(); ++i) {
      encoder.set_input_array(inputs[i]);
    }
    encoder.set_output_array(out);
    std::unique_lock launch(*p->launch, std::defer_lock);
    if (scaling_ == Scaling::Outer) {
      launch.lock();
      // A is the weight, B the activations (see Plan).
      const void* a_scale = mx::gpu_ptr<void>(inputs[3]);
      const void* b_scale = mx::gpu_ptr<void>(inputs[2]);
      check(
          lt().desc_set(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof a_scale),
          "A_SCALE_POINTER");
      check(
          lt().desc_set(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof b_scale),
          "B_SCALE_POINTER");
    }
    float alpha = 1.0f, beta = 0.0f;
    void* d = mx::gpu_ptr<void>(out);
    auto capture = encoder.capture_context();
    cublasStatus_t status = lt().matmul(
        lt().handle, p->desc, &alpha, mx::gpu_ptr<void>(w), p->a, mx::gpu_ptr<void>(x), p->b,
        &beta, d, p->d, d, p->d, &p->algo.algo, aligned, bytes, encoder.stream());
    if (status != CUBLAS_STATUS_SUCCESS) {
      std::string what = "cublasLtMatmul of x " + describe(x) + " by w " + describe(w);
      if (scaling_ == Scaling::Outer) {
        auto offset = [](const mx::array& a) {
          return std::to_string(reinterpret_cast<uintptr_t>(mx::gpu_ptr<void>(a)) % 256);
        };
        what += " (scales at " + offset(inputs[2]) + " and " + offset(inputs[3]) +
            " bytes past 256-byte boundaries)";
      }
      check(status, what.c_str());
    }
  }

  const char* name() const override {
    return "Fp8Matmul";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const Fp8Matmul*>(&other);
    return o && o->scaling_ == scaling_;
  }

 private:
  Scaling scaling_;
};

// The product of `operands` (Fp8Matmul's inputs before the buffers) by plan `p`.
mx::array fp8_product(
    int m, int n, mx::Dtype out, Scaling scaling, const Plan& p,
    std::vector<mx::array> operands, mx::Stream stream) {
  // In device memory (see device_memory.h; managed memory cost the 86 MB output of a
  // feed-forward product milliseconds). The workspace's 256 spare bytes let Fp8Matmul
  // align it (see there).
  auto buffers = device_arrays(
      {{m, n}, {static_cast<int>(p.algo.workspaceSize + 256)}}, {out, mx::uint8},
      {operands[0], operands[1]}, stream);
  operands.push_back(std::move(buffers[0]));
  operands.push_back(std::move(buffers[1]));
  return mx::array({m, n}, out, std::make_shared<Fp8Matmul>(stream, scaling), std::move(operands));
}

}  // namespace

std::optional<mx::array> fp8_gemm(
    const mx::array& x, const mx::array& w, mx::Dtype out, mx::Stream stream) {
  int m = x.shape(0), k = x.shape(1), n = w.shape(0);
  const Plan* p = plan(m, n, k, out, Scaling::After);
  if (!p) {
    return std::nullopt;
  }
  // cuBLASLt reads both as dense row-major K-contiguous matrices.
  return fp8_product(
      m, n, out, Scaling::After, *p,
      {mx::contiguous(x, false, stream), mx::contiguous(w, false, stream)}, stream);
}

std::optional<mx::array> fp8_gemm_scaled(
    const mx::array& x, const mx::array& x_scale, const mx::array& w, const mx::array& w_scale,
    mx::Dtype out, mx::Stream stream) {
  int m = x.shape(0), k = x.shape(1), n = w.shape(0);
  // cuBLASLt refuses outer-vector scales that are not 16-byte aligned (on the H200: "not
  // supported" at launch for scales 4 or 8 bytes past an aligned address, at every shape
  // tried), and MLX's CUDA allocator serves the smallest arrays from a pool of 8-byte
  // blocks: products of fewer than four rows (a timestep's embedding) scale after.
  const Plan* p = m * sizeof(float) < 16 ? nullptr : plan(m, n, k, out, Scaling::Outer);
  if (!p) {
    return std::nullopt;
  }
  auto dense = [&](const mx::array& a, mx::Dtype dtype) {
    return mx::contiguous(mx::astype(a, dtype, stream), false, stream);
  };
  return fp8_product(
      m, n, out, Scaling::Outer, *p,
      {dense(x, mx::uint8), dense(w, mx::uint8), dense(x_scale, mx::float32),
       dense(w_scale, mx::float32)},
      stream);
}

}  // namespace mlxs
