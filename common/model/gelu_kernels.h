// Vectorized GELU (tanh approximation, HF "gelu_new") kernels on raw float
// buffers. libtorch 1.13's CPU gelu/gelu_backward took 14% of a tiny LoRA
// training step here; these run several times faster (`fedpers bench
// train`). Thread-safe: pure functions of their inputs.
#ifndef FEDPERS_COMMON_MODEL_GELU_KERNELS_H_
#define FEDPERS_COMMON_MODEL_GELU_KERNELS_H_

#include <cstdint>

namespace fedpers {

// y[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); |error| <= 1e-6 |x|.
void GeluTanhForward(const float* x, float* y, int64_t n);
// dx[i] = dy[i] * d gelu(x[i]) / dx.
void GeluTanhBackward(const float* x, const float* dy, float* dx, int64_t n);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_GELU_KERNELS_H_
