// Process-wide libtorch set-up. Torch-free header: the CLI calls it at start.
#ifndef FEDPERS_COMMON_MODEL_RUNTIME_H_
#define FEDPERS_COMMON_MODEL_RUNTIME_H_

#include <string>

namespace fedpers {

struct TorchRuntimeInfo {
  int threads = 1;
  std::string blas_library;     // resolved path of the library serving sgemm_
  bool reference_blas = false;  // Netlib's reference BLAS (about 20x slower here)
};

// True for a library path that is not a known optimized BLAS (OpenBLAS,
// BLIS, MKL, ATLAS), e.g. /usr/lib/x86_64-linux-gnu/blas/libblas.so.3.
bool IsReferenceBlas(const std::string& library_path);

// Cores this process may run on (its CPU affinity mask).
int AvailableCores();

// Sets libtorch's intra-op (and OpenMP/BLAS) thread count: `threads` <= 0
// means AvailableCores(), because libtorch would otherwise use one thread.
// Detects the BLAS libtorch loaded; with `warn`, prints a warning to stderr
// when it is the reference BLAS. Call once at start-up, before any model
// work; not thread-safe.
TorchRuntimeInfo InitTorchRuntime(int threads = 0, bool warn = true);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_RUNTIME_H_
