// Encoding of float update vectors into the ring Z_(2^b) that secure
// aggregation sums over, and back.
//
// Encode: reject NaN/Inf, L2-clip to S, multiply by `scale`, round each
// coordinate stochastically and unbiasedly (randomness from the CSPRNG), and
// store it in two's complement modulo 2^b. The sum of n encodings decodes to
// the sum of the n clipped vectors, with per-coordinate error below
// n / scale and zero mean, as long as the configuration cannot wrap:
// n * (S * scale + 1) < 2^(b-1) (checked by Validate).
#ifndef FEDPERS_SECURE_AGG_RING_ENCODING_H_
#define FEDPERS_SECURE_AGG_RING_ENCODING_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "secure_agg/crypto.h"

namespace fedpers::secagg {

struct RingConfig {
  int bits = 32;            // b in [1, 32]
  double clip_norm = 1.0;   // S, L2
  double scale = 1 << 20;   // quantization: a unit maps to `scale` ring steps
  int64_t max_summands = 1; // n: encodings that may be added together

  // InvalidArgument naming the violated bound (bits out of range, S or scale
  // not positive and finite, n < 1, or a sum of n encodings that could wrap).
  absl::Status Validate() const;
  uint64_t modulus_mask() const { return bits == 64 ? ~0ull : (uint64_t{1} << bits) - 1; }

  // The largest scale that cannot wrap for `n` summands of norm `clip_norm`
  // in `bits` bits (floor to a power of two, so encoding is exact for
  // dyadic values), or InvalidArgument when even scale 1 wraps.
  static absl::StatusOr<RingConfig> ForSummands(int64_t n, int bits, double clip_norm);
};

// Clips `values` (in place) to L2 norm at most `clip_norm`; returns the norm
// before clipping. InvalidArgument for NaN or Inf.
absl::StatusOr<double> ClipL2(std::span<float> values, double clip_norm);

// Encodes `values` (clipped to the config's S first) into ring elements
// (uint32 each, reduced mod 2^b). The rounding's coin flips come from
// AES-256-CTR under `rounding_key` (one fresh random key per encoding; the
// overload without a key draws one from the CSPRNG). Thread-safe.
absl::StatusOr<std::vector<uint32_t>> EncodeToRing(std::span<const float> values, const RingConfig& config,
                                                   const Key32& rounding_key);
absl::StatusOr<std::vector<uint32_t>> EncodeToRing(std::span<const float> values, const RingConfig& config);

// Decodes a ring vector (a single encoding or a sum of up to n) back to
// floats: two's complement b-bit, divided by scale.
std::vector<float> DecodeFromRing(std::span<const uint32_t> ring, const RingConfig& config);

// sum[i] = (sum[i] + x[i]) mod 2^bits. Sizes must match.
absl::Status AddInRing(std::span<uint32_t> sum, std::span<const uint32_t> x, int bits);

// Packs b-bit values densely, little-endian bit order: ceil(n * b / 8)
// bytes. Values must already be reduced mod 2^b.
std::vector<uint8_t> PackBits(std::span<const uint32_t> values, int bits);
// Inverse; InvalidArgument when `packed` is not exactly ceil(count * b / 8)
// bytes or its padding bits are not zero.
absl::StatusOr<std::vector<uint32_t>> UnpackBits(std::span<const uint8_t> packed, size_t count, int bits);

}  // namespace fedpers::secagg

#endif  // FEDPERS_SECURE_AGG_RING_ENCODING_H_
