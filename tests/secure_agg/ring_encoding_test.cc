#include "secure_agg/ring_encoding.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace fedpers::secagg {
namespace {

TEST(RingEncodingTest, RoundTripWithinOneStep) {
  RingConfig c;
  c.bits = 24;
  c.clip_norm = 10;
  c.scale = 1 << 16;
  c.max_summands = 1;
  ASSERT_TRUE(c.Validate().ok());
  std::vector<float> x = {0.5f, -0.25f, 1.2345f, -3.999f, 0.0f, 7.0f};  // norm < 10
  auto ring = EncodeToRing(x, c);
  ASSERT_TRUE(ring.ok()) << ring.status();
  std::vector<float> back = DecodeFromRing(*ring, c);
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_LT(std::abs(back[i] - x[i]), 1.0 / c.scale + 1e-6) << i;
    EXPECT_EQ((*ring)[i] >> 24, 0u) << "reduced mod 2^b";
  }
  // Dyadic values are exact.
  EXPECT_EQ(back[0], 0.5f);
  EXPECT_EQ(back[1], -0.25f);
}

TEST(RingEncodingTest, ClipsToTheNorm) {
  std::vector<float> x = {3, 4};  // norm 5
  auto norm = ClipL2(x, 1.0);
  ASSERT_TRUE(norm.ok());
  EXPECT_DOUBLE_EQ(*norm, 5.0);
  EXPECT_LE(std::sqrt(double(x[0]) * x[0] + double(x[1]) * x[1]), 1.0);
  EXPECT_NEAR(x[0], 0.6, 1e-6);
  std::vector<float> bad = {1, NAN};
  EXPECT_FALSE(ClipL2(bad, 1.0).ok());
  std::vector<float> inf = {INFINITY};
  RingConfig c;
  EXPECT_NE(EncodeToRing(inf, c).status().message().find("NaN or Inf"), absl::string_view::npos);
}

// Stochastic rounding is unbiased: 0.3 * scale + a fraction rounds up with
// probability equal to the fraction. 200000 draws: the mean is within 5
// standard errors (sd of a Bernoulli(0.3) is 0.458).
TEST(RingEncodingTest, StochasticRoundingIsUnbiased) {
  RingConfig c;
  c.scale = 1;
  c.clip_norm = 1e6;  // no clipping of this long vector (norm ~134)
  c.bits = 32;
  std::vector<float> x(200000, 0.3f);
  ASSERT_TRUE(c.Validate().ok());
  auto ring = EncodeToRing(x, c);
  ASSERT_TRUE(ring.ok());
  double sum = 0;
  for (uint32_t v : *ring) {
    ASSERT_LE(v, 1u);
    sum += v;
  }
  const double mean = sum / x.size();
  EXPECT_NEAR(mean, 0.3f, 5 * 0.458 / std::sqrt(double(x.size())));
}

TEST(RingEncodingTest, SumOfEncodingsDecodesToSumOfInputs) {
  const int n = 50;
  auto c = RingConfig::ForSummands(n, 20, 1.0);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Validate().ok());
  RingConfig twice = *c;
  twice.scale *= 2;
  EXPECT_FALSE(twice.Validate().ok()) << "ForSummands picks the largest safe power of two";
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0, 0.3f);
  const size_t m = 1000;
  std::vector<uint32_t> sum(m, 0);
  std::vector<double> expected(m, 0);
  for (int k = 0; k < n; ++k) {
    std::vector<float> x(m);
    for (float& v : x) v = normal(gen);
    std::vector<float> clipped = x;
    ASSERT_TRUE(ClipL2(clipped, 1.0).ok());
    for (size_t i = 0; i < m; ++i) expected[i] += clipped[i];
    auto ring = EncodeToRing(x, *c);
    ASSERT_TRUE(ring.ok());
    ASSERT_TRUE(AddInRing(sum, *ring, c->bits).ok());
  }
  std::vector<float> decoded = DecodeFromRing(sum, *c);
  for (size_t i = 0; i < m; ++i) EXPECT_LT(std::abs(decoded[i] - expected[i]), n / c->scale + 1e-5) << i;
}

TEST(RingEncodingTest, ConfigurationsThatCanWrapAreRefused) {
  RingConfig c;
  c.bits = 16;
  c.clip_norm = 1;
  c.scale = 1 << 10;
  c.max_summands = 32;  // 32 * 1025 = 32800 >= 2^15
  absl::Status s = c.Validate();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("can wrap"), absl::string_view::npos) << s;
  c.max_summands = 31;
  EXPECT_TRUE(c.Validate().ok());
  c.bits = 33;
  EXPECT_FALSE(c.Validate().ok());
  c.bits = 16;
  c.scale = -1;
  EXPECT_FALSE(c.Validate().ok());
  EXPECT_FALSE(RingConfig::ForSummands(1 << 20, 8, 1.0).ok());
}

TEST(RingEncodingTest, PackUnpackEveryWidth) {
  std::mt19937 gen(1);
  for (int b = 1; b <= 32; ++b) {
    const uint32_t mask = b == 32 ? 0xffffffffu : (1u << b) - 1;
    for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{64}, size_t{1001}}) {
      std::vector<uint32_t> v(count);
      for (uint32_t& x : v) x = gen() & mask;
      std::vector<uint8_t> packed = PackBits(v, b);
      EXPECT_EQ(packed.size(), (count * b + 7) / 8);
      auto back = UnpackBits(packed, count, b);
      ASSERT_TRUE(back.ok()) << b;
      EXPECT_EQ(*back, v) << "bits " << b << " count " << count;
    }
  }
  std::vector<uint8_t> packed = PackBits(std::vector<uint32_t>{1, 2, 3}, 5);  // 15 bits in 2 bytes
  EXPECT_FALSE(UnpackBits(packed, 4, 5).ok()) << "wrong length";
  packed.back() |= 0x80;  // padding bit
  EXPECT_NE(UnpackBits(packed, 3, 5).status().message().find("padding"), absl::string_view::npos);
}

}  // namespace
}  // namespace fedpers::secagg
