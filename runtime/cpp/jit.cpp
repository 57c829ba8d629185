// Our CUDA kernels compiled by NVRTC, cached on disk, run as MLX custom kernels: see jit.h.

#include "jit.h"

#include <sstream>
#include <stdexcept>
#include <string>
#include <variant>

#ifdef MLXS_CUDA_RUNTIME
#include "cuda_library.h"

#include <cuda.h>
#include <dlfcn.h>
#include <link.h>
#include <nvrtc.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#endif

namespace mx = mlx::core;

namespace mlxs {

namespace {

// The CUDA type of a dtype's elements in kernel sources.
std::string cuda_type(mx::Dtype dtype) {
  switch (dtype.val()) {
    case mx::Dtype::Val::bool_:
      return "bool";
    case mx::Dtype::Val::uint8:
      return "unsigned char";
    case mx::Dtype::Val::uint16:
      return "unsigned short";
    case mx::Dtype::Val::uint32:
      return "unsigned int";
    case mx::Dtype::Val::uint64:
      return "unsigned long long";
    case mx::Dtype::Val::int8:
      return "signed char";
    case mx::Dtype::Val::int16:
      return "short";
    case mx::Dtype::Val::int32:
      return "int";
    case mx::Dtype::Val::int64:
      return "long long";
    case mx::Dtype::Val::float16:
      return "__half";
    case mx::Dtype::Val::bfloat16:
      return "__nv_bfloat16";
    case mx::Dtype::Val::float32:
      return "float";
    case mx::Dtype::Val::float64:
      return "double";
    case mx::Dtype::Val::complex64:
      return "float2";
  }
  std::ostringstream what;
  what << "[cuda kernels] no CUDA type for " << dtype;
  throw std::invalid_argument(what.str());
}

}  // namespace

int compute_capability(const mx::Device& device) {
  const auto& info = mx::device_info(device);
  auto number = [&](const char* key) {
    auto found = info.find(key);
    return found != info.end() && std::holds_alternative<size_t>(found->second)
        ? static_cast<int>(std::get<size_t>(found->second))
        : 0;
  };
  return number("compute_capability_major") * 10 + number("compute_capability_minor");
}

std::string kernel_source(
    const KernelSpec& spec, const std::vector<mx::Dtype>& input_dtypes,
    const std::vector<mx::Dtype>& output_dtypes, const Constants& constants) {
  if (input_dtypes.size() != spec.inputs.size() || output_dtypes.size() != spec.outputs.size()) {
    throw std::invalid_argument(
        "[" + spec.name + "] takes " + std::to_string(spec.inputs.size()) + " inputs and " +
        std::to_string(spec.outputs.size()) + " outputs, given " +
        std::to_string(input_dtypes.size()) + " and " + std::to_string(output_dtypes.size()));
  }
  std::vector<std::string> params;
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    params.push_back("const " + cuda_type(input_dtypes[i]) + "* " + spec.inputs[i]);
  }
  for (size_t i = 0; i < spec.outputs.size(); ++i) {
    params.push_back(cuda_type(output_dtypes[i]) + "* " + spec.outputs[i]);
  }
  for (const auto& scalar : spec.scalars) {
    params.push_back("const int " + scalar);
  }
  std::string src = "#include <cuda_bf16.h>\n#include <cuda_fp16.h>\n\n";
  src += spec.header;
  src += "\nextern \"C\" __global__ void " + spec.name + "(";
  for (size_t i = 0; i < params.size(); ++i) {
    src += (i ? ",\n    " : "\n    ") + params[i];
  }
  src += ") {\n";
  for (const auto& [name, value] : constants) {
    if (auto* n = std::get_if<int>(&value)) {
      src += "  constexpr int " + name + " = " + std::to_string(*n) + ";\n";
    } else if (auto* b = std::get_if<bool>(&value)) {
      src += "  constexpr bool " + name + " = " + (*b ? "true" : "false") + ";\n";
    } else {
      src += "  using " + name + " = " + cuda_type(std::get<mx::Dtype>(value)) + ";\n";
    }
  }
  src += spec.body;
  src += "\n}\n";
  return src;
}

#ifdef MLXS_CUDA_RUNTIME

namespace {

// The NVRTC entry points this file calls, from the library libmlx.so links (so loaded).
struct Nvrtc {
  decltype(&nvrtcVersion) version;
  decltype(&nvrtcGetErrorString) error_string;
  decltype(&nvrtcCreateProgram) create;
  decltype(&nvrtcCompileProgram) compile;
  decltype(&nvrtcGetProgramLogSize) log_size;
  decltype(&nvrtcGetProgramLog) log;
  decltype(&nvrtcGetCUBINSize) cubin_size;
  decltype(&nvrtcGetCUBIN) cubin;
  decltype(&nvrtcDestroyProgram) destroy;
};

const Nvrtc& nvrtc() {
  static const Nvrtc nvrtc = [] {
    std::string soname = "libnvrtc.so." + std::to_string(CUDA_VERSION / 1000);
    CudaLibrary lib(soname.c_str(), "cuda kernels");
    Nvrtc n;
    lib.bind(n.version, "nvrtcVersion");
    lib.bind(n.error_string, "nvrtcGetErrorString");
    lib.bind(n.create, "nvrtcCreateProgram");
    lib.bind(n.compile, "nvrtcCompileProgram");
    lib.bind(n.log_size, "nvrtcGetProgramLogSize");
    lib.bind(n.log, "nvrtcGetProgramLog");
    lib.bind(n.cubin_size, "nvrtcGetCUBINSize");
    lib.bind(n.cubin, "nvrtcGetCUBIN");
    lib.bind(n.destroy, "nvrtcDestroyProgram");
    return n;
  }();
  return nvrtc;
}

// NVRTC's options. As MLX compiles its own kernels: unannotated functions (the kernels'
// lambdas) are device code. The NVRTC of the H200 test machine (PyTorch's) refused them
// without it; the pinned one does not.
std::vector<std::string> nvrtc_options(
    const std::string& arch, const std::vector<std::string>& include_dirs) {
  std::vector<std::string> options{
      "--gpu-architecture=" + arch, "--device-as-default-execution-space"};
  for (const auto& dir : include_dirs) {
    options.push_back("--include-path=" + dir);
  }
  return options;
}

void check(nvrtcResult result, const char* what) {
  if (result != NVRTC_SUCCESS) {
    throw std::runtime_error(
        std::string("[cuda kernels] ") + what + " failed: " + nvrtc().error_string(result));
  }
}

}  // namespace

std::string compile_cuda(
    const std::string& name, const std::string& source, const std::string& arch,
    const std::vector<std::string>& include_dirs) {
  const Nvrtc& n = nvrtc();
  nvrtcProgram program;
  std::string file = name + ".cu";
  check(
      n.create(&program, source.c_str(), file.c_str(), 0, nullptr, nullptr),
      "nvrtcCreateProgram");
  struct Destroy {
    const Nvrtc& n;
    nvrtcProgram& p;
    ~Destroy() {
      n.destroy(&p);
    }
  } destroy{n, program};
  std::vector<std::string> options = nvrtc_options(arch, include_dirs);
  std::vector<const char*> argv;
  for (const auto& option : options) {
    argv.push_back(option.c_str());
  }
  nvrtcResult compiled = n.compile(program, static_cast<int>(argv.size()), argv.data());
  if (compiled != NVRTC_SUCCESS) {
    size_t size = 0;
    check(n.log_size(program, &size), "nvrtcGetProgramLogSize");
    std::string log(size, '\0');
    check(n.log(program, log.data()), "nvrtcGetProgramLog");
    throw std::runtime_error(
        "[cuda kernels] NVRTC did not compile " + name + " for " + arch + ": " +
        n.error_string(compiled) + "\n" + log.c_str());
  }
  size_t size = 0;
  check(n.cubin_size(program, &size), "nvrtcGetCUBINSize");
  std::string cubin(size, '\0');
  check(n.cubin(program, cubin.data()), "nvrtcGetCUBIN");
  return cubin;
}

namespace {

namespace fs = std::filesystem;

// The directory of libmlx.so's install (`<root>/lib/libmlx.so`), or empty.
fs::path mlx_root() {
  void* handle = dlopen("libmlx.so", RTLD_NOW | RTLD_NOLOAD);
  if (!handle) {
    return {};
  }
  link_map* map = nullptr;
  fs::path root;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map && map->l_name) {
    root = fs::path(map->l_name).parent_path().parent_path();
  }
  dlclose(handle);
  return root;
}

// CUDA's headers where MLX's own compiler finds them: the wheels' layout beside MLX's
// (site-packages/nvidia/cu13/include), else CUDA_HOME, CUDA_PATH or /usr/local/cuda; and
// CCCL's (cuda_bf16.h includes <nv/target>), the toolkit's or those MLX bundles.
const std::vector<std::string>& include_dirs() {
  static const std::vector<std::string> dirs = [] {
    fs::path root = mlx_root();
    std::vector<fs::path> candidates;
    if (!root.empty()) {
#if CUDA_VERSION < 13000
      const std::string wheel = "cuda_runtime";
#else
      const std::string wheel = "cu" + std::to_string(CUDA_VERSION / 1000);
#endif
      candidates.push_back(root.parent_path() / "nvidia" / wheel / "include");
    }
    for (const char* var : {"CUDA_HOME", "CUDA_PATH"}) {
      if (const char* dir = std::getenv(var); dir && *dir) {
        candidates.push_back(fs::path(dir) / "include");
      }
    }
    candidates.push_back("/usr/local/cuda/include");
    std::vector<std::string> found;
    std::string tried;
    for (const auto& dir : candidates) {
      std::error_code error;
      if (fs::exists(dir / "cuda_bf16.h", error)) {
        found.push_back(dir.string());
        break;
      }
      tried += (tried.empty() ? "" : ", ") + dir.string();
    }
    if (found.empty()) {
      throw std::runtime_error(
          "[cuda kernels] CUDA's headers (cuda_bf16.h) are in none of " + tried +
          ": install the nvidia-cuda-runtime wheel beside MLX or set CUDA_HOME");
    }
    // A CUDA 13 toolkit's own CCCL, else the one MLX bundles.
    std::vector<fs::path> cccl{fs::path(found[0]) / "cccl"};
    if (!root.empty()) {
      cccl.push_back(root / "include" / "cccl");
    }
    for (const auto& dir : cccl) {
      std::error_code error;
      if (fs::exists(dir, error)) {
        found.push_back(dir.string());
        break;
      }
    }
    return found;
  }();
  return dirs;
}

// "sm_90a": a GPU's architecture, with Hopper's and later GPUs' own features.
std::string device_arch(const mx::Device& device) {
  int cc = compute_capability(device);
  if (cc == 0) {
    throw std::runtime_error(
        "[cuda kernels] MLX reports no compute capability for GPU " +
        std::to_string(device.index));
  }
  return "sm_" + std::to_string(cc) + (cc >= 90 ? "a" : "");
}

// FNV-1a: names and checksums of cached binaries, which are used only when the source
// saved beside them is this one.
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h = (h ^ c) * 1099511628211ull;
  }
  return h;
}

// Where binaries are kept between processes: under MLX's PTX cache directory, which the
// runtime points at the user's cache (see shim.cpp). Without one (no home directory),
// none: MLX's default under /tmp is shared with every user of the machine.
fs::path cache_dir() {
  const char* dir = std::getenv("MLX_PTX_CACHE_DIR");
  return dir && *dir ? fs::path(dir) / "mlxs" : fs::path();
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return in ? bytes.str() : std::string();
}

// Writes `bytes` to `path` through a file of its own renamed over it, so that another
// process reads the whole file or none. The cache is an optimization: failures are ignored.
void write_file(const fs::path& path, const std::string& bytes) {
  // Unique across processes that share the directory, containers (equal pids) included.
  static std::atomic<unsigned> counter{0};
  fs::path tmp = path;
  tmp += ".tmp-" + std::to_string(getpid()) + "-" +
      std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()) + "-" +
      std::to_string(counter++);
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::error_code error;
    fs::remove(tmp, error);
    return;
  }
  std::error_code error;
  fs::rename(tmp, path, error);
  if (error) {
    fs::remove(tmp, error);
  }
}

std::string hex(uint64_t v) {
  char digits[17];
  std::snprintf(digits, sizeof digits, "%016llx", static_cast<unsigned long long>(v));
  return digits;
}

}  // namespace

std::string cached_cuda_binary(
    const std::string& name, const std::string& source, const std::string& arch,
    const std::vector<std::string>& include_dirs, const std::string& dir, bool* compiled) {
  const Nvrtc& n = nvrtc();
  int major = 0, minor = 0;
  check(n.version(&major, &minor), "nvrtcVersion");
  std::string key = source + "\n// nvrtc " + std::to_string(major) + "." + std::to_string(minor);
  for (const auto& option : nvrtc_options(arch, include_dirs)) {
    key += " " + option;
  }
  key += "\n";
  // What is saved beside a binary: its key, and a checksum that finds a truncated or
  // damaged file (the file name's hash only spreads keys over names).
  auto label = [&](const std::string& binary) {
    return key + "// binary " + hex(fnv1a(binary)) + "\n";
  };
  fs::path base = dir.empty() ? fs::path() : fs::path(dir) / (name + "-" + hex(fnv1a(key)));
  if (!base.empty()) {
    std::string cubin = read_file(fs::path(base).replace_extension(".cubin"));
    if (!cubin.empty() && read_file(fs::path(base).replace_extension(".cu")) == label(cubin)) {
      if (compiled) {
        *compiled = false;
      }
      return cubin;
    }
  }
  std::string cubin = compile_cuda(name, source, arch, include_dirs);
  if (!base.empty()) {
    std::error_code error;
    fs::create_directories(dir, error);
    write_file(fs::path(base).replace_extension(".cubin"), cubin);
    write_file(fs::path(base).replace_extension(".cu"), label(cubin));
  }
  if (compiled) {
    *compiled = true;
  }
  return cubin;
}

namespace {

// The binary of `source` for `device`, compiled or read once per process. Never freed, as
// MLX's own JIT caches are not: threads may still launch kernels while the process exits.
const std::string& binary(const std::string& name, const std::string& source, mx::Device device) {
  struct Compiled {
    std::string arch;
    std::map<std::string, std::string> binaries;  // by source
  };
  static auto* mutex = new std::mutex;
  static auto* devices = new std::map<int, Compiled>;
  std::lock_guard lock(*mutex);
  auto on = devices->find(device.index);
  if (on == devices->end()) {
    on = devices->emplace(device.index, Compiled{device_arch(device), {}}).first;
  }
  Compiled& compiled = on->second;
  if (auto found = compiled.binaries.find(source); found != compiled.binaries.end()) {
    return found->second;
  }
  std::string cubin = cached_cuda_binary(
      name, source, compiled.arch, include_dirs(), cache_dir().string(), nullptr);
  return compiled.binaries.emplace(source, std::move(cubin)).first->second;
}

}  // namespace

std::vector<mx::array> run_kernel(
    const KernelSpec& spec, const std::vector<mx::array>& inputs,
    const std::vector<mx::Shape>& output_shapes, const std::vector<mx::Dtype>& output_dtypes,
    const Constants& constants, const std::vector<int>& scalars, std::tuple<int, int, int> grid,
    std::tuple<int, int, int> threads, mx::StreamOrDevice stream, bool contiguous) {
  if (scalars.size() != spec.scalars.size() || output_shapes.size() != output_dtypes.size()) {
    throw std::invalid_argument(
        "[" + spec.name + "] takes " + std::to_string(spec.scalars.size()) +
        " int parameters and a dtype per output shape");
  }
  std::vector<mx::Dtype> input_dtypes;
  for (const auto& in : inputs) {
    input_dtypes.push_back(in.dtype());
  }
  std::string source = kernel_source(spec, input_dtypes, output_dtypes, constants);
  std::vector<mx::fast::ScalarArg> args(scalars.begin(), scalars.end());
  mx::Stream s = mx::to_stream(stream);
  return mx::fast::precompiled_cuda_kernel(
      spec.name, binary(spec.name, source, s.device), inputs, output_shapes, output_dtypes, args,
      grid, threads, 0, std::nullopt, contiguous, s);
}

#else

std::vector<mx::array> run_kernel(
    const KernelSpec& spec, const std::vector<mx::array>&, const std::vector<mx::Shape>&,
    const std::vector<mx::Dtype>&, const Constants&, const std::vector<int>&,
    std::tuple<int, int, int>, std::tuple<int, int, int>, mx::StreamOrDevice, bool) {
  throw std::logic_error(
      "[" + spec.name + "] this build has no CUDA headers: it runs no kernels of its own");
}

#endif

}  // namespace mlxs
