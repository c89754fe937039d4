#include "secure_agg/shamir.h"

#include <gtest/gtest.h>

#include "secure_agg/crypto.h"

namespace fedpers::secagg {
namespace {

TEST(FieldTest, Arithmetic) {
  const uint64_t p = kShamirPrime;
  EXPECT_EQ(FieldAdd(p - 1, 1), 0u);
  EXPECT_EQ(FieldSub(0, 1), p - 1);
  EXPECT_EQ(FieldMul(p - 1, p - 1), 1u);  // (-1)^2
  EXPECT_EQ(FieldMul(uint64_t{1} << 60, 2), 1u << 0);  // 2^61 = 1 mod p
  for (uint64_t a : std::vector<uint64_t>{1, 2, 12345, p - 2, p - 1}) EXPECT_EQ(FieldMul(a, FieldInverse(a)), 1u) << a;
}

// Every t-subset of n shares recovers the secret.
TEST(ShamirTest, EveryThresholdSubsetReconstructs) {
  Bytes secret = *FromHex("00112233445566778899aabbccddeeff0123456789abcdef00112233445566ff");
  for (uint32_t n : {1u, 3u, 5u, 6u}) {
    for (uint32_t t = 1; t <= n; ++t) {
      auto shares = ShamirSplit(secret, t, n);
      ASSERT_TRUE(shares.ok());
      for (uint32_t mask = 0; mask < (1u << n); ++mask) {
        if (static_cast<uint32_t>(__builtin_popcount(mask)) != t) continue;
        std::vector<ShamirShare> subset;
        for (uint32_t i = 0; i < n; ++i) {
          if (mask & (1u << i)) subset.push_back((*shares)[i]);
        }
        auto back = ShamirReconstruct(subset, t, secret.size());
        ASSERT_TRUE(back.ok()) << back.status();
        EXPECT_EQ(*back, secret) << "n " << n << " t " << t << " mask " << mask;
      }
    }
  }
}

// Perfect secrecy: any t-1 shares fit every secret. For each candidate we
// build the degree t-1 polynomial through (0, candidate) and the t-1 seen
// shares, take its value at a fresh point as a t-th share, and check that
// these t shares reconstruct the candidate: the seen shares rule nothing out.
TEST(ShamirTest, AnyTMinusOneSharesFitEverySecret) {
  Bytes secret = {1, 2, 3};
  const uint32_t t = 3, n = 5;
  auto shares = *ShamirSplit(secret, t, n);
  std::vector<ShamirShare> seen = {shares[1], shares[4]};  // t - 1 shares
  for (uint64_t candidate : {0ull, 1ull, 0x030201ull, 0xffffffffffffull}) {
    std::vector<ShamirShare> with_secret = seen;
    ShamirShare zero;
    zero.x = 6;  // stand-in point: evaluate the fitted polynomial there
    std::vector<uint64_t> xs = {0, seen[0].x, seen[1].x};
    std::vector<uint64_t> ys = {candidate, seen[0].y[0], seen[1].y[0]};
    uint64_t v = 0;
    for (size_t i = 0; i < 3; ++i) {
      uint64_t num = 1, den = 1;
      for (size_t j = 0; j < 3; ++j) {
        if (j == i) continue;
        num = FieldMul(num, FieldSub(6, xs[j]));
        den = FieldMul(den, FieldSub(xs[i], xs[j]));
      }
      v = FieldAdd(v, FieldMul(ys[i], FieldMul(num, FieldInverse(den))));
    }
    zero.y = {v};
    with_secret.push_back(zero);
    auto back = ShamirReconstruct(with_secret, t, 7);
    if (candidate < (uint64_t{1} << 56)) {
      ASSERT_TRUE(back.ok()) << back.status();
      uint64_t got = 0;
      for (int b = 0; b < 7; ++b) got |= static_cast<uint64_t>((*back)[b]) << (8 * b);
      EXPECT_EQ(got, candidate);
    }
  }
}

TEST(ShamirTest, BadSharesAreRejectedWithAStatus) {
  Bytes secret(32, 0xab);
  auto shares = *ShamirSplit(secret, 3, 5);
  std::vector<ShamirShare> two = {shares[0], shares[1]};
  EXPECT_EQ(ShamirReconstruct(two, 3, 32).status().code(), absl::StatusCode::kFailedPrecondition);

  std::vector<ShamirShare> s = {shares[0], shares[1], shares[2]};
  s[1].x = 0;
  EXPECT_NE(ShamirReconstruct(s, 3, 32).status().message().find("x = 0"), absl::string_view::npos);
  s = {shares[0], shares[1], shares[1]};
  EXPECT_NE(ShamirReconstruct(s, 3, 32).status().message().find("two shares"), absl::string_view::npos);
  s = {shares[0], shares[1], shares[2]};
  s[2].y[0] = kShamirPrime;
  EXPECT_NE(ShamirReconstruct(s, 3, 32).status().message().find("outside the field"), absl::string_view::npos);
  s = {shares[0], shares[1], shares[2]};
  s[0].y.pop_back();
  EXPECT_NE(ShamirReconstruct(s, 3, 32).status().message().find("expected 5"), absl::string_view::npos);
  // A forged share among more than t is detected.
  s = {shares[0], shares[1], shares[2], shares[3]};
  s[3].y[2] = FieldAdd(s[3].y[2], 1);
  EXPECT_NE(ShamirReconstruct(s, 3, 32).status().message().find("inconsistent"), absl::string_view::npos);
  EXPECT_FALSE(ShamirSplit(secret, 0, 5).ok());
  EXPECT_FALSE(ShamirSplit(secret, 6, 5).ok());
  EXPECT_FALSE(ShamirSplit({}, 1, 1).ok());
}

TEST(ShamirTest, SharesAreFreshEachTime) {
  Bytes secret(16, 1);
  auto a = *ShamirSplit(secret, 2, 3), b = *ShamirSplit(secret, 2, 3);
  EXPECT_NE(a[0].y, b[0].y);
}

}  // namespace
}  // namespace fedpers::secagg
