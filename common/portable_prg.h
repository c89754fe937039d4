// The project's own portable pseudo-random generator. Its output depends only
// on the seed and the integer operations below, never on the machine, the
// compiler or a library version; it derives the frozen global LoRA factors
// A_g that every client and the coordinator must agree on bit for bit. Not
// for secrets (secure_agg/ has the CSPRNG for those).
#ifndef FEDPERS_COMMON_PORTABLE_PRG_H_
#define FEDPERS_COMMON_PORTABLE_PRG_H_

#include "absl/strings/string_view.h"
#include <cstdint>
#include <string_view>
#include <vector>

namespace fedpers {

// xoshiro256** seeded through SplitMix64. Not thread-safe; cheap to copy.
class PortablePrg {
 public:
  explicit PortablePrg(uint64_t seed);
  // Seeds from a 64-bit seed and a label (e.g. a parameter name), so that
  // streams for different labels are independent.
  PortablePrg(uint64_t seed, absl::string_view label);

  uint64_t Next();
  // Uniform in [0, bound) without modulo bias; bound > 0.
  uint64_t NextBelow(uint64_t bound);
  // Uniform in (0, 1), exactly k / 2^24 + 2^-25 for integer k: representable
  // in float, identical everywhere.
  double NextUnitOpen();

 private:
  uint64_t s_[4];
};

// 64-bit FNV-1a of `bytes`.
uint64_t Fnv1a64(absl::string_view bytes);

// A [rows x cols] row-major matrix, uniform in (-1/sqrt(cols), 1/sqrt(cols))
// (the bound of PEFT's default LoRA A init), derived from (seed, name).
std::vector<float> DeriveLoraA(uint64_t seed, absl::string_view name, int64_t rows, int64_t cols);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_PORTABLE_PRG_H_
