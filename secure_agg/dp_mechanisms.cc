#include "secure_agg/dp_mechanisms.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/portable_prg.h"

namespace fedpers::dp {
namespace {

bool IsPowerOfTwo(size_t n) { return n > 0 && (n & (n - 1)) == 0; }

size_t NextPowerOfTwo(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

size_t PaddedTo(size_t d, size_t block) { return (d + block - 1) / block * block; }

// Orthonormal Walsh-Hadamard transform of each block of v.
void BlockFwht(std::span<float> v, size_t block) {
  const float norm = 1.0f / std::sqrt(static_cast<float>(block));
  for (size_t start = 0; start < v.size(); start += block) {
    std::span<float> b = v.subspan(start, block);
    for (size_t h = 1; h < block; h <<= 1) {
      for (size_t i = 0; i < block; i += 2 * h) {
        for (size_t j = i; j < i + h; ++j) {
          const float x = b[j], y = b[j + h];
          b[j] = x + y;
          b[j + h] = x - y;
        }
      }
    }
    for (float& x : b) x *= norm;
  }
}

absl::Status CheckRotationShape(size_t size, size_t block) {
  if (!IsPowerOfTwo(block)) {
    return absl::InvalidArgumentError(absl::StrCat("rotation block ", block, " is not a power of two"));
  }
  if (size == 0 || size % block != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("rotation needs a positive multiple of its block ", block, " values, not ", size));
  }
  return absl::OkStatus();
}

// The public random signs of the rotation (portable PRG: every party derives the same).
void ApplySigns(std::span<float> v, uint64_t seed) {
  PortablePrg prg(seed, "fedpers hadamard signs");
  uint64_t bits = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i % 64 == 0) bits = prg.Next();
    if ((bits >> (i % 64)) & 1) v[i] = -v[i];
  }
}

}  // namespace

absl::Status DistributedDpConfig::Validate() const {
  if (!(noise_multiplier >= 0) || !std::isfinite(noise_multiplier)) {
    return absl::InvalidArgumentError(absl::StrCat("noise multiplier ", noise_multiplier, " must be >= 0"));
  }
  if (min_clients < 1) return absl::InvalidArgumentError("the minimum number of clients must be at least 1");
  return absl::OkStatus();
}

double DistributedDpConfig::ClientSigma(const secagg::RingConfig& ring) const {
  return noise_multiplier * ring.clip_norm * ring.scale / std::sqrt(static_cast<double>(min_clients));
}

fedpers::v1::RingSpec ToProto(const secagg::RingConfig& ring) {
  fedpers::v1::RingSpec s;
  s.set_bits(static_cast<uint32_t>(ring.bits));
  s.set_scale(ring.scale);
  s.set_clip_norm(ring.clip_norm);
  s.set_max_summands(static_cast<uint64_t>(ring.max_summands));
  return s;
}

fedpers::v1::DpSpec ToProto(const DistributedDpConfig& dp) {
  fedpers::v1::DpSpec s;
  s.set_noise_multiplier(dp.noise_multiplier);
  s.set_min_clients(static_cast<uint64_t>(dp.min_clients));
  s.set_rotate(dp.rotate);
  s.set_rotation_seed(dp.rotation_seed);
  return s;
}

absl::StatusOr<secagg::RingConfig> RingFromProto(const fedpers::v1::RingSpec& spec) {
  secagg::RingConfig ring;
  ring.bits = static_cast<int>(std::min<uint32_t>(spec.bits(), 64));
  ring.scale = spec.scale();
  ring.clip_norm = spec.clip_norm();
  ring.max_summands = static_cast<int64_t>(std::min<uint64_t>(spec.max_summands(), uint64_t{1} << 40));
  if (absl::Status s = ring.Validate(); !s.ok()) return s;
  return ring;
}

absl::StatusOr<DistributedDpConfig> DpFromProto(const fedpers::v1::DpSpec& spec) {
  DistributedDpConfig dp;
  dp.noise_multiplier = spec.noise_multiplier();
  dp.min_clients = static_cast<int64_t>(std::min<uint64_t>(spec.min_clients(), uint64_t{1} << 40));
  dp.rotate = spec.rotate();
  dp.rotation_seed = spec.rotation_seed();
  if (absl::Status s = dp.Validate(); !s.ok()) return s;
  return dp;
}

size_t RotationBlock(size_t d) {
  constexpr size_t kMinBlock = 1024;
  const size_t largest = NextPowerOfTwo(d);
  size_t block = largest;
  while (block > kMinBlock && PaddedTo(d, block) - d > d / 64) block >>= 1;
  const size_t length = PaddedTo(d, block);
  while (block < largest && PaddedTo(d, block << 1) == length) block <<= 1;
  return block;
}

size_t RotatedLength(size_t d, const DistributedDpConfig& config) {
  if (!config.rotate) return d;
  return PaddedTo(d, RotationBlock(d));
}

double RoundedNormBound(const secagg::RingConfig& ring, size_t m) {
  const double c = ring.clip_norm * ring.scale * (1 + 0x1p-20);
  const double md = static_cast<double>(m);
  const double t = std::sqrt(std::log(1e3) / 2);
  return std::sqrt(c * c + md / 4 + t * (2 * c + std::sqrt(md)));
}

double AccountedNoiseMultiplier(double z, const secagg::RingConfig& ring, size_t m) {
  return z * ring.clip_norm * ring.scale / RoundedNormBound(ring, m);
}

absl::StatusOr<std::vector<uint32_t>> EncodeWithinNorm(std::span<const float> values, const secagg::RingConfig& ring,
                                                       double max_norm, RandomSource& rng) {
  constexpr int kMaxTries = 64;
  const uint64_t mask = ring.modulus_mask();
  const uint64_t half = uint64_t{1} << (ring.bits - 1);
  double norm = 0;
  for (int attempt = 0; attempt < kMaxTries; ++attempt) {
    // The rounding key comes from the caller's source: the CSPRNG in a
    // deployment, a seeded stream in a reproducible simulation.
    secagg::Key32 rounding_key;
    for (size_t i = 0; i < rounding_key.size(); i += 8) {
      const uint64_t word = rng.Next64();
      for (size_t b = 0; b < 8; ++b) rounding_key[i + b] = static_cast<uint8_t>(word >> (8 * b));
    }
    absl::StatusOr<std::vector<uint32_t>> encoded = secagg::EncodeToRing(values, ring, rounding_key);
    if (!encoded.ok()) return encoded.status();
    double norm_sq = 0;
    for (uint32_t x : *encoded) {
      const uint64_t u = x & mask;
      const double v = u >= half ? -static_cast<double>(mask + 1 - u) : static_cast<double>(u);
      norm_sq += v * v;
    }
    norm = std::sqrt(norm_sq);
    // The double sum of up to 2^22 squares near 2^62 can be off by ~5e-10
    // relative: accept only what is below the bound by more than that.
    if (norm_sq <= max_norm * max_norm * (1 - 1e-9)) return encoded;
  }
  return absl::InternalError(absl::StrCat("conditional rounding: ", kMaxTries, " roundings all exceeded the norm bound ",
                                          max_norm, " ring steps (the last reached ", norm, ")"));
}

absl::Status ValidateRingForNoise(const secagg::RingConfig& ring, const DistributedDpConfig& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  const double n = static_cast<double>(ring.max_summands);
  const double bound = n * (std::floor(ring.clip_norm * ring.scale) + 1) + 8 * config.ClientSigma(ring) * std::sqrt(n);
  const double half = std::ldexp(1.0, ring.bits - 1);
  if (!(bound < half)) {
    return absl::InvalidArgumentError(absl::StrCat("the noised sum of ", ring.max_summands, " clients can reach ", bound,
                                                   ", not below 2^(b-1) = ", half,
                                                   "; lower the scale or raise the ring bits"));
  }
  return absl::OkStatus();
}

absl::Status RotateForward(std::span<float> v, size_t block, uint64_t seed) {
  if (absl::Status s = CheckRotationShape(v.size(), block); !s.ok()) return s;
  ApplySigns(v, seed);
  BlockFwht(v, block);
  return absl::OkStatus();
}

absl::Status RotateInverse(std::span<float> v, size_t block, uint64_t seed) {
  if (absl::Status s = CheckRotationShape(v.size(), block); !s.ok()) return s;
  BlockFwht(v, block);  // an orthonormal Hadamard matrix is its own inverse
  ApplySigns(v, seed);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> PrivatizeForSecAgg(std::span<const float> update,
                                                         const secagg::RingConfig& ring,
                                                         const DistributedDpConfig& config, RandomSource& rng) {
  if (absl::Status s = ring.Validate(); !s.ok()) return s;
  if (absl::Status s = ValidateRingForNoise(ring, config); !s.ok()) return s;
  std::vector<float> v(RotatedLength(update.size(), config), 0.0f);
  std::copy(update.begin(), update.end(), v.begin());
  // Clip before rotating: the rotation is orthonormal, so the norm bound holds after it.
  absl::StatusOr<double> norm = secagg::ClipL2(v, ring.clip_norm);
  if (!norm.ok()) return norm.status();
  if (config.rotate) {
    if (absl::Status s = RotateForward(v, RotationBlock(update.size()), config.rotation_seed); !s.ok()) return s;
    // Float rounding in the transform can nudge the norm above S: clip again.
    if (absl::StatusOr<double> n2 = secagg::ClipL2(v, ring.clip_norm); !n2.ok()) return n2.status();
  }
  absl::StatusOr<std::vector<uint32_t>> encoded = EncodeWithinNorm(v, ring, RoundedNormBound(ring, v.size()), rng);
  if (!encoded.ok()) return encoded.status();
  const double sigma = config.ClientSigma(ring);
  if (sigma > 0) {
    absl::StatusOr<DiscreteGaussianSampler> sampler = DiscreteGaussianSampler::Create(sigma);
    if (!sampler.ok()) return sampler.status();
    const uint64_t mask = ring.modulus_mask();
    for (uint32_t& x : *encoded) {
      x = static_cast<uint32_t>((static_cast<uint64_t>(x) + static_cast<uint64_t>(sampler->Sample(rng))) & mask);
    }
  }
  return encoded;
}

absl::StatusOr<std::vector<float>> DecodeAggregate(std::span<const uint32_t> ring_sum, const secagg::RingConfig& ring,
                                                   const DistributedDpConfig& config, size_t d) {
  if (ring_sum.size() != RotatedLength(d, config)) {
    return absl::InvalidArgumentError(absl::StrCat("aggregate has ", ring_sum.size(), " values, expected ",
                                                   RotatedLength(d, config)));
  }
  std::vector<float> v = secagg::DecodeFromRing(ring_sum, ring);
  if (config.rotate) {
    if (absl::Status s = RotateInverse(v, RotationBlock(d), config.rotation_seed); !s.ok()) return s;
  }
  v.resize(d);
  return v;
}

absl::Status AddCentralGaussianNoise(std::span<float> sum, double z, double clip_norm, RandomSource& rng) {
  if (!(z >= 0) || !(clip_norm > 0)) return absl::InvalidArgumentError("central noise needs z >= 0 and a positive clip norm");
  const double sd = z * clip_norm;
  for (float& x : sum) x = static_cast<float>(x + sd * StandardNormal(rng));
  return absl::OkStatus();
}

absl::Status AdaptiveClipping::Validate() const {
  if (!(target_quantile >= 0 && target_quantile <= 1)) return absl::InvalidArgumentError("target quantile must be in [0, 1]");
  if (!(learning_rate > 0)) return absl::InvalidArgumentError("clip learning rate must be positive");
  if (!(count_stddev >= 0)) return absl::InvalidArgumentError("count noise must be >= 0");
  return absl::OkStatus();
}

double ClipIndicator(double update_norm, double clip_norm) { return (update_norm <= clip_norm ? 1.0 : 0.0) - 0.5; }

absl::StatusOr<double> UpdatedClipNorm(double clip_norm, double noisy_indicator_sum, int64_t clients,
                                       const AdaptiveClipping& config) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (clients < 1) return absl::InvalidArgumentError("adaptive clipping needs at least one client");
  if (!(clip_norm > 0)) return absl::InvalidArgumentError("clip norm must be positive");
  const double b_bar = std::clamp(noisy_indicator_sum / static_cast<double>(clients) + 0.5, 0.0, 1.0);
  return clip_norm * std::exp(-config.learning_rate * (b_bar - config.target_quantile));
}

absl::StatusOr<double> AdjustedNoiseMultiplier(double z, double count_stddev) {
  if (!(z > 0)) return absl::InvalidArgumentError("noise multiplier must be positive");
  if (!(count_stddev > 0)) return absl::InvalidArgumentError("count noise must be positive");
  const double rest = 1 / (z * z) - 1 / (4 * count_stddev * count_stddev);
  if (!(rest > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("the count noise ", count_stddev,
                                                   " uses the whole privacy budget of noise multiplier ", z));
  }
  return 1 / std::sqrt(rest);
}

}  // namespace fedpers::dp
