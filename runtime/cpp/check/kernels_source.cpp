// Writes every variant of runtime/cpp/kernels.cpp's CUDA kernels as one CUDA file, with the
// signatures MLX's fast::cuda_kernel gives them (inputs, then `<name>_shape` and
// `<name>_ndim` where the source uses them, then outputs; template arguments as
// constants), for check_kernels to compile. It includes kernels.cpp itself to reach the
// source builders.

#include "../kernels.cpp"

#include <iostream>

namespace {

struct Input {
  std::string name;
  std::string type;
};

void kernel(
    const std::string& name, const std::vector<Input>& inputs,
    const std::vector<Input>& outputs, const std::string& constants, const std::string& body) {
  std::cout << "namespace " << name << " {\n__global__ void kernel(\n";
  std::string params;
  for (const auto& in : inputs) {
    params += "    const " + in.type + "* " + in.name + ",\n";
    if (body.find(in.name + "_shape") != std::string::npos) {
      params += "    const __grid_constant__ Shape " + in.name + "_shape,\n";
    }
    if (body.find(in.name + "_ndim") != std::string::npos) {
      params += "    const __grid_constant__ int " + in.name + "_ndim,\n";
    }
  }
  for (const auto& out : outputs) {
    params += "    " + out.type + "* " + out.name + ",\n";
  }
  params.resize(params.size() - 2);
  std::cout << params << ") {\n" << constants << body << "}\n}  // namespace " << name << "\n\n";
}

std::string flag(const char* name, bool v) {
  return std::string("  constexpr bool ") + name + " = " + (v ? "true" : "false") + ";\n";
}

std::string number(const char* name, int v) {
  return std::string("  constexpr int ") + name + " = " + std::to_string(v) + ";\n";
}

}  // namespace

int main() {
  std::cout << "namespace mlx::core::cu {\n" << mlxs::kHeader << "\n";
  int n = 0;
  for (const char* t : {"__nv_bfloat16", "float"}) {
    std::string type = t;
    int pack = type == "float" ? 4 : 8;
    for (bool norm : {false, true}) {
      for (int d : {128, 64, 6, 500, 512}) {
        std::vector<Input> in{{"x", type}, {"cos_t", "float"}, {"sin_t", "float"}};
        if (norm) {
          in.push_back({"weight", type});
        }
        auto [vec, lanes] = mlxs::rope_layout(d, type == "float" ? mx::float32 : mx::bfloat16);
        kernel(
            "rope_" + std::to_string(n++), in, {{"out", type}},
            number("D", d) + number("VEC", vec) + number("LANES", lanes) + flag("NORM", norm) +
                "  using T = " + type + ";\n",
            mlxs::rope_table_source(norm, 1e-5f));
      }
    }
    for (int v = 0; v < 16; ++v) {
      bool residual = v & 1, gate = v & 2, out = v & 4, scale = v & 8;
      if (!residual && !out) {
        continue;
      }
      for (int d : {3840, 100}) {
        std::vector<Input> in{{"x", type}, {"y", type}, {"y_weight", type},
                              {"gate", type}, {"out_weight", type}, {"scale", type}};
        std::vector<Input> outs;
        if (residual) {
          outs.push_back({"h", type});
        }
        if (out) {
          outs.push_back({"o", type});
        }
        kernel(
            "residual_" + std::to_string(n++), in, outs,
            number("D", d) + number("VEC", d % pack == 0 ? pack : 1) +
                number("THREADS", mlxs::kResidualThreads) + flag("RESIDUAL", residual) +
                flag("GATE", gate) + flag("OUT", out) + flag("SCALE", scale) +
                "  using T = " + type + ";\n",
            mlxs::residual_rms_norm_source(residual, gate, out, scale, 1e-5f, 1e-6f));
      }
    }
    // Rows held in registers and rows read twice, packed and value by value; plain rows
    // and a SwiGLU's.
    for (int k : {3840, 10240, 100, 20000, 2100}) {
      for (bool swiglu : {false, true}) {
        std::vector<Input> in = swiglu ? std::vector<Input>{{"gate", type}, {"up", type}}
                                       : std::vector<Input>{{"x", type}};
        kernel(
            "fp8_quantize_" + std::to_string(n++), in, {{"q", "uint8_t"}, {"scale", "float"}},
            number("K", k) + number("VEC", k % pack == 0 ? pack : 1) +
                number("THREADS", mlxs::kFp8Threads) + "  using T = " + type + ";\n",
            mlxs::fp8_quantize_source(swiglu));
      }
    }
  }
  for (const char* t : {"__nv_bfloat16", "__half", "float"}) {
    std::string type = t;
    for (bool affine : {true, false}) {
      std::vector<Input> in{{"w", "uint32_t"}, {"scales", affine ? type : "uint8_t"}};
      if (affine) {
        in.push_back({"biases", type});
      }
      kernel(
          "dequantize_" + std::to_string(n++), in, {{"out", type}},
          number("GROUP", affine ? 64 : 32) + "  using T = " + type + ";\n",
          mlxs::dequantize_source(affine));
    }
  }
  std::cout << "}  // namespace mlx::core::cu\n";
}
