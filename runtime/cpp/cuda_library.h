// CUDA's libraries reached by dlopen (CUDA builds only): libmlx.so links them, so binaries
// that call them this way link nothing MLX does not.
#pragma once

#include <dlfcn.h>

#include <stdexcept>
#include <string>

namespace mlxs {

// A library libmlx.so depends on (so loaded already), by soname; `op` names the caller in
// the errors thrown where the library or one of its functions is missing.
class CudaLibrary {
 public:
  CudaLibrary(const char* soname, const char* op) : soname_(soname), op_(op) {
    handle_ = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
    if (!handle_) {
      handle_ = dlopen(soname, RTLD_NOW);
    }
    if (!handle_) {
      throw std::runtime_error(error("cannot be loaded"));
    }
  }

  // `f` bound to the library's function `name`.
  template <typename F>
  void bind(F& f, const char* name) const {
    f = reinterpret_cast<F>(dlsym(handle_, name));
    if (!f) {
      throw std::runtime_error(error(std::string("lacks ") + name));
    }
  }

 private:
  std::string error(const std::string& what) const {
    return std::string("[") + op_ + "] " + soname_ + " " + what;
  }

  void* handle_;
  const char* soname_;
  const char* op_;
};

}  // namespace mlxs
