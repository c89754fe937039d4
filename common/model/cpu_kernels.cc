#include "common/model/cpu_kernels.h"

#include <algorithm>


namespace fedpers {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// exp(x) for x in [-87, 20]: x = n ln2 + r with |r| <= ln2 / 2, then a
// degree-6 Taylor polynomial of e^r (relative error < 1e-7) scaled by 2^n
// through the exponent bits. Plain arithmetic, so the loops vectorize
// without libm. Callers clamp x into the range.
inline float ExpSmall(float x) {
  const float z = x * 1.4426950408889634f;
  // Round to nearest by truncating a positive number (z > -128 here).
  const int n = static_cast<int>(z + 128.5f) - 128;
  const float fn = static_cast<float>(n);
  const float r = (x - fn * 0.693145751953125f) - fn * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    int i;
    float f;
  } scale;
  scale.i = (n + 127) << 23;
  return p * scale.f;
}

// tanh(u) = 1 - 2 / (exp(2u) + 1), with |u| clamped to 9 where tanh is 1 in
// float precision.
inline float Tanh(float u) {
  const float c = std::min(std::max(u, -9.0f), 9.0f);
  return 1.0f - 2.0f / (ExpSmall(2.0f * c) + 1.0f);
}

// row[j] = exp(row[j] - max) for j < n; returns their sum.
__attribute__((target_clones("avx2", "default")))
float ExpRowInPlace(float* __restrict row, int64_t n, float max) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = ExpSmall(std::max(row[j] - max, -87.0f));
    row[j] = e;
    sum += e;
  }
  return sum;
}

}  // namespace

__attribute__((target_clones("avx2", "default")))
void GeluTanhForward(const float* __restrict x, float* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = Tanh(kSqrt2OverPi * (v + kCubic * v * v * v));
    y[i] = 0.5f * v * (1.0f + t);
  }
}

__attribute__((target_clones("avx2", "default")))
void GeluTanhBackward(const float* __restrict x, const float* __restrict dy, float* __restrict dx, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i];
    const float t = Tanh(kSqrt2OverPi * (v + kCubic * v * v * v));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kCubic * v * v);
    dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
  }
}

void CausalSoftmaxRows(float* s, int64_t t) {
  for (int64_t i = 0; i < t; ++i) {
    float* row = s + i * t;
    float m = row[0];
    for (int64_t j = 1; j <= i; ++j) m = std::max(m, row[j]);
    const float sum = ExpRowInPlace(row, i + 1, m);
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j <= i; ++j) row[j] *= inv;
    for (int64_t j = i + 1; j < t; ++j) row[j] = 0.0f;
  }
}

__attribute__((target_clones("avx2", "default")))
void SoftmaxBackwardRows(const float* __restrict p, float* __restrict g, int64_t t) {
  for (int64_t i = 0; i < t; ++i) {
    const float* pr = p + i * t;
    float* gr = g + i * t;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j <= i; ++j) dot += pr[j] * gr[j];
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) gr[j] = pr[j] * (gr[j] - dot);
    // Above the diagonal P is 0; the caller may not have computed dP there.
    for (int64_t j = i + 1; j < t; ++j) gr[j] = 0.0f;
  }
}

}  // namespace fedpers
