#include "common/model/runtime.h"

#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <torch/torch.h>

namespace fedpers {
namespace {

// The library that serves sgemm_ to libtorch: the first definition in the
// process's global symbol scope, which is where libtorch's call binds.
std::string BlasProvidingSgemm() {
  void* sym = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info info;
  if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "";
  std::error_code ec;
  std::filesystem::path resolved = std::filesystem::canonical(info.dli_fname, ec);
  return ec ? std::string(info.dli_fname) : resolved.string();
}

}  // namespace

bool IsReferenceBlas(const std::string& library_path) {
  if (library_path.empty()) return false;  // unknown: no library serves sgemm_
  for (const char* optimized : {"openblas", "blis", "mkl", "atlas"}) {
    if (library_path.find(optimized) != std::string::npos) return false;
  }
  // Netlib's reference BLAS (Debian puts it under .../blas/).
  return true;
}

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

TorchRuntimeInfo InitTorchRuntime(int threads, bool warn) {
  TorchRuntimeInfo info;
  info.threads = threads > 0 ? threads : AvailableCores();
  torch::set_num_threads(info.threads);
  // Training allocates and frees the same multi-megabyte activations every
  // step. glibc serves those with mmap/munmap by default, so every step pays
  // page faults on fresh zeroed pages; keeping them on the heap removed that
  // (measured: 10-15% of a tiny LoRA step, `fedpers bench train`).
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  info.blas_library = BlasProvidingSgemm();
  info.reference_blas = IsReferenceBlas(info.blas_library);
  if (warn && info.reference_blas) {
    std::fprintf(stderr,
                 "warning: libtorch is using the reference BLAS (%s); training runs about 20x "
                 "slower. Install an optimized one: sudo apt-get install libopenblas0-openmp\n",
                 info.blas_library.c_str());
  }
  return info;
}

}  // namespace fedpers
