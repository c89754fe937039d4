// Vectorized elementwise kernels on raw float buffers, for the steps where
// libtorch 1.13's CPU kernels were the bottleneck of a LoRA training step
// (GELU took 14% of it). Compiled with AVX2 and baseline clones. Thread-safe:
// pure functions of their inputs.
#ifndef FEDPERS_COMMON_MODEL_CPU_KERNELS_H_
#define FEDPERS_COMMON_MODEL_CPU_KERNELS_H_

#include <cstdint>

namespace fedpers {

// y[i] = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); |error| <= 1e-6 |x|.
void GeluTanhForward(const float* x, float* y, int64_t n);
// dx[i] = dy[i] * d gelu(x[i]) / dx.
void GeluTanhBackward(const float* x, const float* dy, float* dx, int64_t n);

// Causal softmax of a [t, t] row-major score matrix in place: row i keeps
// columns 0..i (softmax over them) and sets the rest to 0.
void CausalSoftmaxRows(float* scores, int64_t t);

// Softmax backward in place: on entry `grad` holds dL/dP for probabilities
// `p` ([t, t], zero above the diagonal; `grad` is read only on and below
// it); on exit dL/dS, row by row dS = P * (dP - sum(P * dP)), 0 above the
// diagonal.
void SoftmaxBackwardRows(const float* p, float* grad, int64_t t);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_CPU_KERNELS_H_
