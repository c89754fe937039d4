#include "common/model/runtime.h"

#include <link.h>
#include <malloc.h>
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <torch/torch.h>

namespace fedpers {
namespace {

int CollectBlas(struct dl_phdr_info* info, size_t, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (info->dlpi_name == nullptr) return 0;
  std::string name = info->dlpi_name;
  if (name.find("libblas.so") != std::string::npos) {
    std::error_code ec;
    std::filesystem::path resolved = std::filesystem::canonical(name, ec);
    *out = ec ? name : resolved.string();
    return 1;
  }
  return 0;
}

}  // namespace

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
  dl_iterate_phdr(CollectBlas, &info.blas_library);
  // Debian's alternatives put Netlib's reference BLAS under .../blas/.
  info.reference_blas = !info.blas_library.empty() &&
                        info.blas_library.find("openblas") == std::string::npos &&
                        info.blas_library.find("blis") == std::string::npos &&
                        info.blas_library.find("mkl") == std::string::npos &&
                        info.blas_library.find("atlas") == std::string::npos;
  if (warn && info.reference_blas) {
    std::fprintf(stderr,
                 "warning: libtorch is using the reference BLAS (%s); training runs about 20x "
                 "slower. Install an optimized one: sudo apt-get install libopenblas0-openmp\n",
                 info.blas_library.c_str());
  }
  return info;
}

}  // namespace fedpers
