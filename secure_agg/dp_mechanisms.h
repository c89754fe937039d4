// Differential-privacy mechanisms of the update pipeline.
//
// Distributed mode (no trusted coordinator; Kairouz, Liu, Steinke 2021): each
// client clips its update to L2 norm S, optionally rotates it with a random-
// sign Walsh-Hadamard transform (spreading it over coordinates so that
// quantization and wrap-around hurt less), scales and stochastically rounds it
// (conditionally: within RoundedNormBound)
// into the SecAgg ring and adds its share of discrete Gaussian noise, so that
// the securely summed vector of n clients carries noise of standard
// deviation z S (in update units). Central mode (trusted coordinator): the
// coordinator adds N(0, (z S)^2) to the decoded sum.
// Adaptive clipping (Andrew et al. 2021) moves S toward a target quantile
// of update norms from a noised count.
#ifndef FEDPERS_SECURE_AGG_DP_MECHANISMS_H_
#define FEDPERS_SECURE_AGG_DP_MECHANISMS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "fedpers/v1/round.pb.h"
#include "secure_agg/discrete_gaussian.h"
#include "secure_agg/ring_encoding.h"

namespace fedpers::dp {

struct DistributedDpConfig {
  double noise_multiplier = 1.0;  // z: aggregate noise std / clip norm
  int64_t min_clients = 1;        // n: the noise is split so that n clients' shares reach z S
  bool rotate = true;             // random-sign Hadamard rotation before quantization
  uint64_t rotation_seed = 0;     // public, shared by the clients of a round

  // InvalidArgument for z < 0 or n < 1.
  absl::Status Validate() const;
  // Per-client discrete Gaussian sigma in ring steps.
  double ClientSigma(const secagg::RingConfig& ring) const;
};

// Conversions to and from the wire form of a round invitation. The From*
// functions validate what a peer sent.
fedpers::v1::RingSpec ToProto(const secagg::RingConfig& ring);
fedpers::v1::DpSpec ToProto(const DistributedDpConfig& dp);
absl::StatusOr<secagg::RingConfig> RingFromProto(const fedpers::v1::RingSpec& spec);
absl::StatusOr<DistributedDpConfig> DpFromProto(const fedpers::v1::DpSpec& spec);

// The rotation is block-diagonal: random signs over the whole vector, then
// an orthonormal Walsh-Hadamard transform on each block of RotationBlock(d)
// values. Padding d to the next power of two would nearly double the upload
// of a d just above one (73,728 -> 131,072 for `tiny`); padding to a
// multiple of a block costs at most max(d / 64, 1023) values. The block is
// the largest power of two, at least 1024 (or d's next power of two when
// that is smaller), within that padding, then grown while the padded length
// stays the same: larger blocks spread a coordinate's mass further.
// Every party derives the block from d alone: d is always the update's own
// length, never a padded one (RotatedLength of a padded length may pad again).
size_t RotationBlock(size_t d);
// Length after padding for the rotation (a multiple of RotationBlock(d)),
// or d without rotation.
size_t RotatedLength(size_t d, const DistributedDpConfig& config);

// Checks that n_max summands of clipped, rounded, noised vectors cannot wrap
// the ring except with probability below 2^-40 per coordinate: n (S scale +
// 1) + 8 sigma_c sqrt(n) < 2^(b-1). InvalidArgument naming the excess.
absl::Status ValidateRingForNoise(const secagg::RingConfig& ring, const DistributedDpConfig& config);

// Conditional stochastic rounding (Kairouz, Liu and Steinke 2021). Plain
// stochastic rounding moves each of the m coordinates by less than one ring
// step, so an encoded update's L2 norm could reach S scale + sqrt(m) while
// its noise is z S scale; a client therefore re-rounds until the norm is at
// most RoundedNormBound(ring, m), and the ledger accounts that bound.
// With c = S scale (1 + 2^-20) (the margin covers float clipping) and
// t = sqrt(ln(1 / beta) / 2), beta = 1e-3:
//   bound^2 = c^2 + m / 4 + t (2 c + sqrt(m)).
// E||x~||^2 <= ||x||^2 + m / 4, and each coordinate's x~_i^2 spans at most
// 2 |x_i| + 1, so by Hoeffding one rounding exceeds the bound with
// probability below beta: re-rounding is rare and its bias negligible. The
// excess over S scale is about m / (8 S scale) + t steps, where plain
// rounding's is sqrt(m): for `tiny` (m = 73,728) in a 32-bit ring at z = 1,
// 8e-6 to 1.6e-5 of S scale instead of 1e-3 (more at larger z, whose noise
// cap lowers the scale); in a 16-bit ring of 10 clients, 0.3-1.1% instead of
// 12-21%.
double RoundedNormBound(const secagg::RingConfig& ring, size_t m);

// Encodes `values` into `ring` (EncodeToRing, rounding keys drawn from
// `rng`), re-rounding until the encoding's L2 norm in ring steps is at most
// `max_norm`. Internal error after 64 tries (below 1e-190 at the bound
// above; for a tighter bound it names the bound). Exposed for tests; the
// client path is PrivatizeForSecAgg.
absl::StatusOr<std::vector<uint32_t>> EncodeWithinNorm(std::span<const float> values, const secagg::RingConfig& ring,
                                                       double max_norm, RandomSource& rng);

// The noise multiplier to account for a round in `ring` with m ring values:
// the noise is z S scale per client's worth of sensitivity, the sensitivity
// RoundedNormBound: z S scale / RoundedNormBound(ring, m).
double AccountedNoiseMultiplier(double z, const secagg::RingConfig& ring, size_t m);

// The client side: clip to ring.clip_norm, rotate, encode into the ring
// (conditional rounding, within RoundedNormBound) and add N_Z(0, sigma_c^2)
// per coordinate. Returns RotatedLength(d) ring values.
absl::StatusOr<std::vector<uint32_t>> PrivatizeForSecAgg(std::span<const float> update,
                                                         const secagg::RingConfig& ring,
                                                         const DistributedDpConfig& config, RandomSource& rng);

// The server side: decode a ring sum and undo the rotation; returns d floats.
absl::StatusOr<std::vector<float>> DecodeAggregate(std::span<const uint32_t> ring_sum, const secagg::RingConfig& ring,
                                                   const DistributedDpConfig& config, size_t d);

// In-place orthonormal random-sign block Hadamard rotation, and its
// inverse. `block` is a power of two and v.size() a positive multiple of it;
// InvalidArgument otherwise.
absl::Status RotateForward(std::span<float> v, size_t block, uint64_t seed);
absl::Status RotateInverse(std::span<float> v, size_t block, uint64_t seed);

// Central mode: adds N(0, (z S)^2) to every coordinate of a decoded sum.
absl::Status AddCentralGaussianNoise(std::span<float> sum, double noise_multiplier, double clip_norm,
                                     RandomSource& rng);

// Adaptive clipping (Andrew et al. 2021, as in TF-Federated).
struct AdaptiveClipping {
  double target_quantile = 0.5;  // gamma
  double learning_rate = 0.2;    // eta
  double count_stddev = 0;       // sigma_b; 0: 0.05 * expected clients, set by the caller
  absl::Status Validate() const;
};
// Each client's report: 1[norm <= C] - 0.5.
double ClipIndicator(double update_norm, double clip_norm);
// b_bar = clamp((sum of indicators + noise) / m + 0.5, 0, 1); C' = C exp(-eta (b_bar - gamma)).
absl::StatusOr<double> UpdatedClipNorm(double clip_norm, double noisy_indicator_sum, int64_t clients,
                                       const AdaptiveClipping& config);
// The update's noise multiplier when part of the budget goes to the count:
// z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2). InvalidArgument when the count's
// noise alone exceeds the budget.
absl::StatusOr<double> AdjustedNoiseMultiplier(double z, double count_stddev);

}  // namespace fedpers::dp

#endif  // FEDPERS_SECURE_AGG_DP_MECHANISMS_H_
