// Compiles every variant of runtime/cpp/kernels.cpp's CUDA kernels with NVRTC for sm_90a,
// from the very sources the runtime compiles (jit.cpp's kernel_source over kernels.cpp's
// specs), so that a kernel NVRTC would refuse is found without a GPU. It includes
// kernels.cpp itself to reach the specs. Arguments: CUDA's include directories.

#include "../kernels.cpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

namespace {

using mlxs::Constants;
using mlxs::KernelSpec;

int compiled = 0;
std::vector<std::string> include_dirs;

void check(
    const KernelSpec& spec, const std::vector<mx::Dtype>& inputs,
    const std::vector<mx::Dtype>& outputs, const Constants& constants) {
  std::string source = mlxs::kernel_source(spec, inputs, outputs, constants);
  try {
    mlxs::compile_cuda(spec.name, source, "sm_90a", include_dirs);
    ++compiled;
  } catch (const std::exception& e) {
    std::cerr << "check_kernels: " << spec.name << " does not compile:\n"
              << source << "\n"
              << e.what() << "\n";
    std::exit(1);
  }
}

void expect(bool ok, const char* what) {
  if (!ok) {
    std::cerr << "check_kernels: " << what << "\n";
    std::exit(1);
  }
}

// jit.cpp's disk cache: a second process reads what the first compiled, and a damaged
// or foreign file is compiled again and replaced.
void check_cache() {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/check_kernels_cache.XXXXXX";
  const char* made = mkdtemp(tmpl);
  expect(made != nullptr, "the cache test could not make a directory");
  std::string dir = made;
  std::string source = mlxs::kernel_source(
      {"mlxs_device_arrays", {"in0"}, {"out0"}, {}, "", ""}, {mx::uint8}, {mx::float32}, {});
  auto get = [&](bool expect_compiled, const char* what) {
    bool fresh = false;
    std::string binary = mlxs::cached_cuda_binary(
        "mlxs_device_arrays", source, "sm_90a", include_dirs, dir, &fresh);
    expect(fresh == expect_compiled, what);
    return binary;
  };
  std::string first = get(true, "the cache did not compile a kernel it had never seen");
  std::string again = get(false, "the cache compiled a kernel it had saved");
  expect(again == first, "the cache returned other bytes");
  fs::path cubin;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".cubin") {
      cubin = entry.path();
    }
  }
  expect(!cubin.empty(), "the cache saved no .cubin file");
  fs::resize_file(cubin, fs::file_size(cubin) / 2);
  again = get(true, "the cache used a truncated binary");
  expect(again == first, "the cache compiled other bytes");
  again = get(false, "the cache did not save the binary again");
  expect(again == first, "the cache returned other bytes");
  std::ofstream(fs::path(cubin).replace_extension(".cu")) << "another source";
  get(true, "the cache used a binary saved for another source");
  fs::remove_all(dir);
  // A directory that cannot be made (not even by root) is no cache, not an error.
  dir = "/proc/check_kernels_cache";
  again = get(true, "the cache read an unwritable directory");
  expect(again == first, "the cache compiled other bytes");
  expect(!fs::exists(dir), "the cache made a directory under /proc");
}

// A source NVRTC refuses: the error names the kernel and carries NVRTC's log.
void check_error() {
  try {
    mlxs::compile_cuda(
        "mlxs_broken", "extern \"C\" __global__ void mlxs_broken() { undeclared(); }", "sm_90a",
        include_dirs);
  } catch (const std::runtime_error& e) {
    std::string what = e.what();
    expect(
        what.find("mlxs_broken") != std::string::npos &&
            what.find("undeclared") != std::string::npos,
        "error does not name the kernel and its log");
    return;
  }
  expect(false, "test's broken kernel compiled");
}

}  // namespace

int main(int argc, char** argv) {
  include_dirs.assign(argv + 1, argv + argc);
  for (mx::Dtype t : {mx::bfloat16, mx::float32}) {
    int pack = 16 / static_cast<int>(mx::size_of(t));
    for (bool norm : {false, true}) {
      for (int d : {128, 64, 6, 500, 512}) {
        std::vector<mx::Dtype> in{t, mx::float32, mx::float32};
        if (norm) {
          in.push_back(t);
        }
        auto [vec, lanes] = mlxs::rope_layout(d, t);
        check(
            mlxs::rope_table_spec(norm, 1e-5f), in, {t},
            {{"D", d}, {"VEC", vec}, {"LANES", lanes}, {"NORM", norm}, {"T", t}});
      }
    }
    for (int v = 0; v < 16; ++v) {
      bool residual = v & 1, gate = v & 2, out = v & 4, scale = v & 8;
      if (!residual && !out) {
        continue;
      }
      // As residual_rms_norm passes them: y for an absent residual, a float32 scalar for
      // the other absent inputs.
      auto present = [&](bool p) { return p ? t : mx::float32; };
      std::vector<mx::Dtype> in{t,             t,            present(residual),
                                present(gate), present(out), present(scale)};
      KernelSpec spec = mlxs::residual_rms_norm_spec(residual, gate, out, scale, 1e-5f, 1e-6f);
      for (int d : {3840, 100}) {
        check(
            spec, in, std::vector<mx::Dtype>(spec.outputs.size(), t),
            {{"D", d},
             {"VEC", d % pack == 0 ? pack : 1},
             {"THREADS", mlxs::kResidualThreads},
             {"RESIDUAL", residual},
             {"GATE", gate},
             {"OUT", out},
             {"SCALE", scale},
             {"T", t}});
      }
    }
    // Rows held in registers and rows read twice, packed and value by value; plain rows
    // and a SwiGLU's.
    for (int k : {3840, 10240, 100, 20000, 2100}) {
      for (bool swiglu : {false, true}) {
        check(
            mlxs::fp8_quantize_spec(swiglu), std::vector<mx::Dtype>(swiglu ? 2 : 1, t),
            {mx::uint8, mx::float32},
            {{"K", k},
             {"VEC", k % pack == 0 ? pack : 1},
             {"THREADS", mlxs::kFp8Threads},
             {"T", t}});
      }
    }
  }
  for (mx::Dtype t : {mx::bfloat16, mx::float16, mx::float32}) {
    for (bool affine : {true, false}) {
      std::vector<mx::Dtype> in{mx::uint32, affine ? t : mx::uint8};
      if (affine) {
        in.push_back(t);
      }
      check(
          mlxs::dequantize_spec(affine), in, {t},
          {{"GROUP", affine ? 64 : 32}, {"T", t}});
    }
  }
  check({"mlxs_device_arrays", {"in0", "in1"}, {"out0", "out1"}, {}, "", ""},
        {mx::uint8, mx::complex64}, {mx::bfloat16, mx::uint8}, {});
  check_cache();
  check_error();
  std::cout << "check_kernels: " << compiled
            << " kernels compile; the binary cache and compile errors work\n";
}
