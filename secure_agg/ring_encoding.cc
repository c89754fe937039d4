#include "secure_agg/ring_encoding.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "secure_agg/crypto.h"

namespace fedpers::secagg {

absl::Status RingConfig::Validate() const {
  if (bits < 1 || bits > 32) return absl::InvalidArgumentError(absl::StrCat("ring bits ", bits, " not in [1, 32]"));
  if (!(clip_norm > 0) || !std::isfinite(clip_norm)) return absl::InvalidArgumentError("clip norm must be positive and finite");
  if (!(scale > 0) || !std::isfinite(scale)) return absl::InvalidArgumentError("ring scale must be positive and finite");
  if (max_summands < 1) return absl::InvalidArgumentError("the number of summands must be at least 1");
  // Largest magnitude of one rounded coordinate: floor(S * scale) + 1.
  const long double per_client = std::floor(static_cast<long double>(clip_norm) * scale) + 1;
  const long double bound = per_client * static_cast<long double>(max_summands);
  const long double half = std::ldexp(1.0L, bits - 1);
  if (!(bound < half)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a sum of ", max_summands, " encodings can wrap the ring: ", max_summands, " x (S * scale + 1) = ",
        static_cast<double>(bound), " is not below 2^(b-1) = ", static_cast<double>(half),
        "; lower the scale or raise the ring bits"));
  }
  return absl::OkStatus();
}

absl::StatusOr<RingConfig> RingConfig::ForSummands(int64_t n, int bits, double clip_norm) {
  RingConfig c;
  c.bits = bits;
  c.clip_norm = clip_norm;
  c.max_summands = n;
  c.scale = 1;
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  // Largest power of two that still validates.
  while (true) {
    RingConfig next = c;
    next.scale = c.scale * 2;
    if (!next.Validate().ok()) break;
    c = next;
  }
  return c;
}

absl::StatusOr<double> ClipL2(std::span<float> values, double clip_norm) {
  double sq = 0;
  for (float v : values) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("update holds NaN or Inf");
    sq += static_cast<double>(v) * v;
  }
  const double norm = std::sqrt(sq);
  if (norm > clip_norm) {
    const double factor = clip_norm / norm;
    for (float& v : values) v = static_cast<float>(v * factor);
    // Float rounding may leave the norm a hair above S; shrink until it is not.
    double after = 0;
    for (float v : values) after += static_cast<double>(v) * v;
    if (std::sqrt(after) > clip_norm) {
      const float shrink = std::nextafter(1.0f, 0.0f);
      for (float& v : values) v *= shrink;
    }
  }
  return norm;
}

absl::StatusOr<std::vector<uint32_t>> EncodeToRing(std::span<const float> values, const RingConfig& config) {
  absl::StatusOr<Key32> key = RandomKey32();
  if (!key.ok()) return key.status();
  return EncodeToRing(values, config, *key);
}

absl::StatusOr<std::vector<uint32_t>> EncodeToRing(std::span<const float> values, const RingConfig& config,
                                                   const Key32& rounding_key) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  std::vector<float> clipped(values.begin(), values.end());
  absl::StatusOr<double> norm = ClipL2(clipped, config.clip_norm);
  if (!norm.ok()) return norm.status();
  // One 32-bit uniform per coordinate from AES-CTR under the rounding key.
  absl::StatusOr<AesCtrPrg> prg = AesCtrPrg::Create(rounding_key);
  if (!prg.ok()) return prg.status();
  std::vector<uint32_t> random(clipped.size());
  if (absl::Status s = prg->Generate(0, {reinterpret_cast<uint8_t*>(random.data()), random.size() * 4}); !s.ok()) {
    return s;
  }
  const uint64_t mask = config.modulus_mask();
  std::vector<uint32_t> out(clipped.size());
  for (size_t i = 0; i < clipped.size(); ++i) {
    const double v = static_cast<double>(clipped[i]) * config.scale;
    const double f = std::floor(v);
    // P(round up) = v - f, to 2^-32 resolution.
    const double u = (static_cast<double>(random[i]) + 0.5) * 0x1p-32;
    const int64_t r = static_cast<int64_t>(f) + (u < v - f ? 1 : 0);
    out[i] = static_cast<uint32_t>(static_cast<uint64_t>(r) & mask);
  }
  std::fill(random.begin(), random.end(), 0);
  return out;
}

std::vector<float> DecodeFromRing(std::span<const uint32_t> ring, const RingConfig& config) {
  std::vector<float> out(ring.size());
  const uint64_t mask = config.modulus_mask();
  const uint64_t half = uint64_t{1} << (config.bits - 1);
  for (size_t i = 0; i < ring.size(); ++i) {
    const uint64_t u = ring[i] & mask;
    const int64_t s = u >= half ? static_cast<int64_t>(u) - static_cast<int64_t>(mask + 1) : static_cast<int64_t>(u);
    out[i] = static_cast<float>(static_cast<double>(s) / config.scale);
  }
  return out;
}

absl::Status AddInRing(std::span<uint32_t> sum, std::span<const uint32_t> x, int bits) {
  if (sum.size() != x.size()) {
    return absl::InvalidArgumentError(absl::StrCat("ring vectors of different lengths: ", sum.size(), " and ", x.size()));
  }
  const uint32_t mask = bits == 32 ? 0xffffffffu : (1u << bits) - 1;
  for (size_t i = 0; i < sum.size(); ++i) sum[i] = (sum[i] + x[i]) & mask;
  return absl::OkStatus();
}

std::vector<uint8_t> PackBits(std::span<const uint32_t> values, int bits) {
  std::vector<uint8_t> out((values.size() * static_cast<size_t>(bits) + 7) / 8, 0);
  uint64_t acc = 0;
  int have = 0;
  size_t pos = 0;
  const uint64_t mask = bits == 32 ? 0xffffffffull : (uint64_t{1} << bits) - 1;
  for (uint32_t v : values) {
    acc |= (static_cast<uint64_t>(v) & mask) << have;
    have += bits;
    while (have >= 8) {
      out[pos++] = static_cast<uint8_t>(acc);
      acc >>= 8;
      have -= 8;
    }
  }
  if (have > 0) out[pos] = static_cast<uint8_t>(acc);
  return out;
}

absl::StatusOr<std::vector<uint32_t>> UnpackBits(std::span<const uint8_t> packed, size_t count, int bits) {
  if (bits < 1 || bits > 32) return absl::InvalidArgumentError(absl::StrCat("ring bits ", bits, " not in [1, 32]"));
  const size_t expected = (count * static_cast<size_t>(bits) + 7) / 8;
  if (packed.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("packed vector has ", packed.size(), " bytes; ", count, " values of ",
                                                   bits, " bits need ", expected));
  }
  std::vector<uint32_t> out(count);
  const uint64_t mask = bits == 32 ? 0xffffffffull : (uint64_t{1} << bits) - 1;
  uint64_t acc = 0;
  int have = 0;
  size_t pos = 0;
  for (size_t i = 0; i < count; ++i) {
    while (have < bits) {
      acc |= static_cast<uint64_t>(packed[pos++]) << have;
      have += 8;
    }
    out[i] = static_cast<uint32_t>(acc & mask);
    acc >>= bits;
    have -= bits;
  }
  if (acc != 0) return absl::InvalidArgumentError("packed vector has non-zero padding bits");
  return out;
}

}  // namespace fedpers::secagg
