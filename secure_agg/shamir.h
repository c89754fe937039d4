// Shamir t-of-n secret sharing of byte strings over the prime field
// GF(2^61 - 1) (a Mersenne prime: reduction is a shift and an add).
//
// A secret of L bytes is cut into ceil(L / 7) chunks of 56 bits; each chunk
// is the constant term of its own random polynomial of degree t - 1. A share
// is the evaluations of all chunk polynomials at one point x in [1, n].
#ifndef FEDPERS_SECURE_AGG_SHAMIR_H_
#define FEDPERS_SECURE_AGG_SHAMIR_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers::secagg {

inline constexpr uint64_t kShamirPrime = (uint64_t{1} << 61) - 1;
inline constexpr size_t kShamirChunkBytes = 7;

// Arithmetic modulo kShamirPrime on reduced operands (< p).
uint64_t FieldAdd(uint64_t a, uint64_t b);
uint64_t FieldSub(uint64_t a, uint64_t b);
uint64_t FieldMul(uint64_t a, uint64_t b);
// a^(p-2); a must be non-zero.
uint64_t FieldInverse(uint64_t a);

struct ShamirShare {
  uint32_t x = 0;               // evaluation point, >= 1
  std::vector<uint64_t> y;      // one field element per secret chunk
  bool operator==(const ShamirShare&) const = default;
};

// Number of field elements per share for a secret of `secret_bytes`.
size_t ShamirChunks(size_t secret_bytes);

// Splits `secret` into `n` shares at x = 1..n, any `t` of which recover it.
// Coefficients come from the CSPRNG. InvalidArgument unless 1 <= t <= n and
// n < 2^31, or when the secret is empty.
absl::StatusOr<std::vector<ShamirShare>> ShamirSplit(std::span<const uint8_t> secret, uint32_t t, uint32_t n);

// As ShamirSplit, with the evaluation points given: one share per x in `xs`
// (distinct, non-zero, below 2^32).
absl::StatusOr<std::vector<ShamirShare>> ShamirSplitAt(std::span<const uint8_t> secret, uint32_t t,
                                                       std::span<const uint32_t> xs);

// Recovers a secret of `secret_bytes` bytes from at least `t` shares.
// InvalidArgument (naming the problem, revealing no share value) for fewer
// than t shares, x = 0, a repeated x, a value outside the field, a share of
// the wrong length, or shares beyond the first t that do not lie on the same
// polynomials (a corrupted or forged share) or a result that is no byte
// secret.
absl::StatusOr<std::vector<uint8_t>> ShamirReconstruct(std::span<const ShamirShare> shares, uint32_t t,
                                                       size_t secret_bytes);

}  // namespace fedpers::secagg

#endif  // FEDPERS_SECURE_AGG_SHAMIR_H_
