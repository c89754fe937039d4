#include "common/portable_prg.h"

#include <cmath>

namespace fedpers {
namespace {

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

PortablePrg::PortablePrg(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : s_) s = SplitMix64(x);
}

PortablePrg::PortablePrg(uint64_t seed, absl::string_view label)
    : PortablePrg(seed ^ Rotl(Fnv1a64(label), 17) ^ 0x6a09e667f3bcc909ULL) {}

uint64_t PortablePrg::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

uint64_t PortablePrg::NextBelow(uint64_t bound) {
  const uint64_t limit = bound * (UINT64_MAX / bound);
  uint64_t r;
  do {
    r = Next();
  } while (r >= limit);
  return r % bound;
}

double PortablePrg::NextUnitOpen() {
  const uint64_t k = Next() >> 40;  // 24 bits
  return (static_cast<double>(k) + 0.5) * 0x1p-24;
}

std::vector<float> DeriveLoraA(uint64_t seed, absl::string_view name, int64_t rows, int64_t cols) {
  PortablePrg prg(seed, name);
  // sqrt and division are correctly rounded in IEEE 754, so bound is exact
  // to the same bits everywhere; this file is compiled without contraction.
  const double bound = 1.0 / std::sqrt(static_cast<double>(cols));
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (float& v : out) {
    const double u = 2.0 * prg.NextUnitOpen() - 1.0;  // exact
    const double scaled = u * bound;
    v = static_cast<float>(scaled);
  }
  return out;
}

}  // namespace fedpers
