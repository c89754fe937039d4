#include "secure_agg/shamir.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "secure_agg/crypto.h"

namespace fedpers::secagg {
namespace {

constexpr uint64_t kP = kShamirPrime;

// A uniform field element from the CSPRNG by rejection (p is just under
// 2^61, so a rejection is rare).
absl::StatusOr<uint64_t> RandomFieldElement(std::span<const uint8_t>& pool, std::vector<uint8_t>& storage) {
  while (true) {
    if (pool.size() < 8) {
      storage.resize(4096);
      if (absl::Status s = SecureRandomBytes(storage); !s.ok()) return s;
      pool = storage;
    }
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(pool[i]) << (8 * i);
    pool = pool.subspan(8);
    v &= (uint64_t{1} << 61) - 1;
    if (v < kP) return v;
  }
}

// Inverts every element of `v` (all non-zero) with one field inversion
// (Montgomery's trick).
void BatchInvert(std::vector<uint64_t>& v) {
  std::vector<uint64_t> prefix(v.size());
  uint64_t acc = 1;
  for (size_t i = 0; i < v.size(); ++i) {
    prefix[i] = acc;
    acc = FieldMul(acc, v[i]);
  }
  uint64_t inv = FieldInverse(acc);
  for (size_t i = v.size(); i-- > 0;) {
    const uint64_t vi = v[i];
    v[i] = FieldMul(inv, prefix[i]);
    inv = FieldMul(inv, vi);
  }
}

// Lagrange coefficients at 0 for the points xs (distinct, non-zero).
std::vector<uint64_t> LagrangeAtZero(const std::vector<uint64_t>& xs) {
  std::vector<uint64_t> num(xs.size(), 1), den(xs.size(), 1);
  for (size_t i = 0; i < xs.size(); ++i) {
    for (size_t j = 0; j < xs.size(); ++j) {
      if (j == i) continue;
      num[i] = FieldMul(num[i], xs[j]);
      den[i] = FieldMul(den[i], FieldSub(xs[j], xs[i]));
    }
  }
  BatchInvert(den);
  for (size_t i = 0; i < xs.size(); ++i) num[i] = FieldMul(num[i], den[i]);
  return num;
}

// Lagrange weights at x for the points xs (x not among them): the value at
// x of the polynomial through (xs[i], y[i]) is sum_i w[i] y[i].
std::vector<uint64_t> LagrangeAt(const std::vector<uint64_t>& xs, uint64_t x) {
  const size_t t = xs.size();
  // w_i = prod_{j != i} (x - x_j) / (x_i - x_j)
  std::vector<uint64_t> den(t, 1), diff(t);
  for (size_t i = 0; i < t; ++i) {
    for (size_t j = 0; j < t; ++j) {
      if (j != i) den[i] = FieldMul(den[i], FieldSub(xs[i], xs[j]));
    }
    diff[i] = FieldSub(x, xs[i]);
  }
  uint64_t all = 1;
  for (uint64_t d : diff) all = FieldMul(all, d);
  std::vector<uint64_t> inv(t);
  for (size_t i = 0; i < t; ++i) inv[i] = FieldMul(den[i], diff[i]);
  BatchInvert(inv);
  std::vector<uint64_t> w(t);
  for (size_t i = 0; i < t; ++i) w[i] = FieldMul(all, inv[i]);  // all / (den_i * (x - x_i))
  return w;
}

}  // namespace

uint64_t FieldAdd(uint64_t a, uint64_t b) {
  uint64_t r = a + b;
  return r >= kP ? r - kP : r;
}

uint64_t FieldSub(uint64_t a, uint64_t b) { return a >= b ? a - b : a + kP - b; }

uint64_t FieldMul(uint64_t a, uint64_t b) {
  const unsigned __int128 prod = static_cast<unsigned __int128>(a) * b;
  const uint64_t lo = static_cast<uint64_t>(prod) & kP;
  const uint64_t hi = static_cast<uint64_t>(prod >> 61);
  const uint64_t r = lo + hi;
  return r >= kP ? r - kP : r;
}

uint64_t FieldInverse(uint64_t a) {
  uint64_t result = 1, base = a, e = kP - 2;
  while (e > 0) {
    if (e & 1) result = FieldMul(result, base);
    base = FieldMul(base, base);
    e >>= 1;
  }
  return result;
}

size_t ShamirChunks(size_t secret_bytes) { return (secret_bytes + kShamirChunkBytes - 1) / kShamirChunkBytes; }

absl::StatusOr<std::vector<ShamirShare>> ShamirSplit(std::span<const uint8_t> secret, uint32_t t, uint32_t n) {
  if (n >= (uint32_t{1} << 31)) return absl::InvalidArgumentError("Shamir: too many shares");
  std::vector<uint32_t> xs(n);
  for (uint32_t i = 0; i < n; ++i) xs[i] = i + 1;
  return ShamirSplitAt(secret, t, xs);
}

absl::StatusOr<std::vector<ShamirShare>> ShamirSplitAt(std::span<const uint8_t> secret, uint32_t t,
                                                       std::span<const uint32_t> xs) {
  const uint32_t n = static_cast<uint32_t>(xs.size());
  if (secret.empty()) return absl::InvalidArgumentError("Shamir: empty secret");
  if (t < 1 || t > n) return absl::InvalidArgumentError(absl::StrCat("Shamir: threshold ", t, " not in [1, ", n, "]"));
  std::set<uint32_t> distinct(xs.begin(), xs.end());
  if (distinct.size() != xs.size() || distinct.count(0)) {
    return absl::InvalidArgumentError("Shamir: evaluation points must be distinct and non-zero");
  }
  const size_t chunks = ShamirChunks(secret.size());
  std::vector<ShamirShare> shares(n);
  for (uint32_t i = 0; i < n; ++i) {
    shares[i].x = xs[i];
    shares[i].y.resize(chunks);
  }
  std::vector<uint8_t> storage;
  std::span<const uint8_t> pool;
  std::vector<uint64_t> coeffs(t);
  for (size_t c = 0; c < chunks; ++c) {
    uint64_t value = 0;
    for (size_t b = 0; b < kShamirChunkBytes && c * kShamirChunkBytes + b < secret.size(); ++b) {
      value |= static_cast<uint64_t>(secret[c * kShamirChunkBytes + b]) << (8 * b);
    }
    coeffs[0] = value;
    for (uint32_t k = 1; k < t; ++k) {
      absl::StatusOr<uint64_t> r = RandomFieldElement(pool, storage);
      if (!r.ok()) return r.status();
      coeffs[k] = *r;
    }
    for (uint32_t i = 0; i < n; ++i) {
      const uint64_t x = xs[i];
      uint64_t acc = 0;
      for (uint32_t k = t; k-- > 0;) acc = FieldAdd(FieldMul(acc, x), coeffs[k]);
      shares[i].y[c] = acc;
    }
  }
  std::fill(coeffs.begin(), coeffs.end(), 0);
  std::fill(storage.begin(), storage.end(), 0);
  return shares;
}

absl::StatusOr<std::vector<uint8_t>> ShamirReconstruct(std::span<const ShamirShare> shares, uint32_t t,
                                                       size_t secret_bytes) {
  if (t < 1) return absl::InvalidArgumentError("Shamir: threshold must be at least 1");
  if (secret_bytes == 0) return absl::InvalidArgumentError("Shamir: empty secret");
  if (shares.size() < t) {
    return absl::FailedPreconditionError(
        absl::StrCat("Shamir: ", shares.size(), " shares, fewer than the threshold ", t));
  }
  const size_t chunks = ShamirChunks(secret_bytes);
  std::set<uint32_t> seen;
  for (size_t i = 0; i < shares.size(); ++i) {
    const ShamirShare& s = shares[i];
    if (s.x == 0) return absl::InvalidArgumentError(absl::StrCat("Shamir: share ", i, " has x = 0"));
    if (!seen.insert(s.x).second) {
      return absl::InvalidArgumentError(absl::StrCat("Shamir: two shares have x = ", s.x));
    }
    if (s.y.size() != chunks) {
      return absl::InvalidArgumentError(absl::StrCat("Shamir: share with x = ", s.x, " has ", s.y.size(),
                                                     " values, expected ", chunks));
    }
    for (uint64_t v : s.y) {
      if (v >= kP) return absl::InvalidArgumentError(absl::StrCat("Shamir: share with x = ", s.x, " holds a value outside the field"));
    }
  }
  std::vector<uint64_t> xs(t);
  for (uint32_t i = 0; i < t; ++i) xs[i] = shares[i].x;
  const std::vector<uint64_t> lambda = LagrangeAtZero(xs);
  // Weights at every extra share's point, shared by all chunks.
  std::vector<std::vector<uint64_t>> extra_weights;
  for (size_t e = t; e < shares.size(); ++e) extra_weights.push_back(LagrangeAt(xs, shares[e].x));
  std::vector<uint8_t> secret(secret_bytes);
  std::vector<uint64_t> ys(t);
  for (size_t c = 0; c < chunks; ++c) {
    uint64_t value = 0;
    for (uint32_t i = 0; i < t; ++i) {
      ys[i] = shares[i].y[c];
      value = FieldAdd(value, FieldMul(lambda[i], ys[i]));
    }
    // Extra shares must lie on the same polynomial.
    for (size_t e = t; e < shares.size(); ++e) {
      uint64_t predicted = 0;
      for (uint32_t i = 0; i < t; ++i) predicted = FieldAdd(predicted, FieldMul(extra_weights[e - t][i], ys[i]));
      if (predicted != shares[e].y[c]) {
        return absl::InvalidArgumentError("Shamir: shares are inconsistent (a share is corrupted or forged)");
      }
    }
    const size_t bytes_here = std::min(kShamirChunkBytes, secret_bytes - c * kShamirChunkBytes);
    if (value >> (8 * bytes_here) != 0) {
      return absl::InvalidArgumentError("Shamir: reconstructed value is not a byte secret (corrupted shares)");
    }
    for (size_t b = 0; b < bytes_here; ++b) secret[c * kShamirChunkBytes + b] = static_cast<uint8_t>(value >> (8 * b));
  }
  return secret;
}

}  // namespace fedpers::secagg
