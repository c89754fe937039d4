#include "secure_agg/dp_mechanisms.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "secure_agg/secagg_client.h"
#include "secure_agg/secagg_server.h"
#include "tests/secure_agg/secagg_harness.h"

namespace fedpers::dp {
namespace {

double Norm(std::span<const float> v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

TEST(DpMechanismsTest, RotationIsOrthonormalAndInvertible) {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal;
  for (size_t block : {size_t{256}, size_t{64}}) {  // one block, and four
    std::vector<float> v(256);
    for (float& x : v) x = normal(gen);
    std::vector<float> r = v;
    ASSERT_TRUE(RotateForward(r, block, 42).ok());
    EXPECT_NEAR(Norm(r), Norm(v), 1e-4 * Norm(v));
    ASSERT_TRUE(RotateInverse(r, block, 42).ok());
    for (size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(r[i], v[i], 1e-5);
  }
  std::vector<float> odd(100);
  EXPECT_FALSE(RotateForward(odd, 100, 1).ok());  // the block is not a power of two
  EXPECT_FALSE(RotateForward(odd, 64, 1).ok());   // nor is the length a multiple of it
  EXPECT_FALSE(RotateInverse(std::span<float>(), 64, 1).ok());
}

// A unit vector's mass spreads evenly over its block: every coordinate of
// the block has magnitude 1 / sqrt(block), and the other blocks stay zero.
TEST(DpMechanismsTest, RotationSpreadsEachBlockEvenly) {
  const size_t block = 1024;
  std::vector<float> v(3 * block, 0.0f);
  v[block + 17] = 1.0f;
  ASSERT_TRUE(RotateForward(v, block, 9).ok());
  for (size_t i = 0; i < v.size(); ++i) {
    const float expected = (i >= block && i < 2 * block) ? 1.0f / 32.0f : 0.0f;
    ASSERT_FLOAT_EQ(std::abs(v[i]), expected) << "coordinate " << i;
  }
}

// Padding for the rotation: the largest block within d / 64 extra values
// (1024 at least), grown while the padded length stays the same. The `tiny`
// adapter's 73,728 values are 9 blocks of 8,192: no padding, where the next
// power of two would send 131,072.
TEST(DpMechanismsTest, RotationPadsToAMultipleOfTheBlock) {
  DistributedDpConfig dp;
  dp.rotate = true;
  EXPECT_EQ(RotationBlock(73728), 8192u);
  EXPECT_EQ(RotatedLength(73728, dp), 73728u);
  EXPECT_EQ(RotationBlock(4000), 4096u);  // 1024-blocks pad to 4096 too: one block
  EXPECT_EQ(RotatedLength(4000, dp), 4096u);
  EXPECT_EQ(RotationBlock(70000), 1024u);
  EXPECT_EQ(RotatedLength(70000, dp), 70656u);
  EXPECT_EQ(RotationBlock(65536), 65536u);
  EXPECT_EQ(RotationBlock(300), 512u);
  EXPECT_EQ(RotatedLength(300, dp), 512u);
  for (size_t d = 1; d < 300000; d = d * 3 / 2 + 7) {
    const size_t block = RotationBlock(d), length = RotatedLength(d, dp);
    ASSERT_EQ(block & (block - 1), 0u) << d;
    ASSERT_EQ(length % block, 0u) << d;
    ASSERT_GE(length, d);
    ASSERT_LE(length - d, std::max<size_t>(d / 64, 1023)) << d;
  }
  dp.rotate = false;
  EXPECT_EQ(RotatedLength(73728, dp), 73728u);
}

// Without noise, ||decode(encode(x))|| <= RoundedNormBound / scale: clipping
// bounds the norm by S and conditional rounding keeps the encoding within
// the bound, well below plain rounding's S + sqrt(m) / scale.
TEST(DpMechanismsTest, EncodedNormNeverExceedsTheRoundedNormBound) {
  secagg::RingConfig ring;
  ring.bits = 24;
  ring.clip_norm = 1.0;
  ring.scale = 1 << 8;  // coarse, so rounding matters
  for (bool rotate : {false, true}) {
    DistributedDpConfig dp;
    dp.noise_multiplier = 0;
    dp.rotate = rotate;
    dp.rotation_seed = 5;
    RandomSource rng = RandomSource::FromTestSeed(1);
    std::mt19937 gen(9);
    std::normal_distribution<float> normal(0, 3);
    for (int trial = 0; trial < 200; ++trial) {
      std::vector<float> x(300);
      for (float& v : x) v = normal(gen);
      auto enc = PrivatizeForSecAgg(x, ring, dp, rng);
      ASSERT_TRUE(enc.ok()) << enc.status();
      std::vector<float> dec = secagg::DecodeFromRing(*enc, ring);
      const double bound = RoundedNormBound(ring, dec.size()) / ring.scale;
      ASSERT_LT(bound, ring.clip_norm + std::sqrt(static_cast<double>(dec.size())) / ring.scale);
      ASSERT_LE(Norm(dec), bound) << "trial " << trial << " rotate " << rotate;
    }
  }
}

// Coordinates halfway between ring steps are the worst case for rounding:
// the squared norm of 4,096 of them at 1.5 steps is 4,096 + Binomial(4,096,
// 1/2) x 3 in steps^2 (mean 10,240, sd 96). Plain rounding exceeds a bound at
// the mean about half the time; conditional rounding never does, and a
// bound below every outcome (64 steps: all round down) is an error naming it.
TEST(DpMechanismsTest, ConditionalRoundingKeepsEveryEncodingWithinTheBound) {
  secagg::RingConfig ring;
  ring.bits = 16;
  ring.clip_norm = 200;  // above the input's norm of 96: no clipping
  ring.scale = 1;
  const std::vector<float> x(4096, 1.5f);
  const double bound = std::sqrt(10240.0);
  RandomSource rng = RandomSource::FromTestSeed(4);
  int plain_over = 0;
  for (int trial = 0; trial < 200; ++trial) {
    auto conditional = EncodeWithinNorm(x, ring, bound, rng);
    ASSERT_TRUE(conditional.ok()) << conditional.status();
    ASSERT_LE(Norm(secagg::DecodeFromRing(*conditional, ring)), bound) << "trial " << trial;
    auto plain = secagg::EncodeToRing(x, ring);
    ASSERT_TRUE(plain.ok());
    if (Norm(secagg::DecodeFromRing(*plain, ring)) > bound) ++plain_over;
  }
  // Binomial(200, ~0.5): below 60 has probability < 1e-8.
  EXPECT_GT(plain_over, 60);
  auto impossible = EncodeWithinNorm(x, ring, 63.0, rng);
  ASSERT_FALSE(impossible.ok());
  EXPECT_NE(impossible.status().message().find("norm bound 63"), std::string::npos) << impossible.status();
}

// The whole client-to-coordinator path over several blocks and padding
// (70,000 values: 69 blocks of 1,024, padded to 70,656): without noise, the
// decoded update differs from the clipped input by the rounding alone, at
// most sqrt(m) / scale in L2 (each of the m rotated coordinates moves by less
// than one ring step, and the inverse rotation keeps norms).
TEST(DpMechanismsTest, PrivatizeThenDecodeRecoversAMultiBlockUpdate) {
  const size_t d = 70000;
  secagg::RingConfig ring;
  ring.bits = 32;
  ring.clip_norm = 1.0;
  ring.max_summands = 1;
  ring.scale = 1 << 20;
  DistributedDpConfig dp;
  dp.noise_multiplier = 0;
  dp.rotate = true;
  dp.rotation_seed = 31;
  ASSERT_EQ(RotationBlock(d), 1024u);
  std::mt19937 gen(4);
  std::normal_distribution<float> normal(0, 0.003f);  // norm about 0.8 < S: no clipping
  std::vector<float> x(d);
  for (float& v : x) v = normal(gen);
  x[12345] = 0.2f;  // one large coordinate, spread over its block
  ASSERT_LT(Norm(x), ring.clip_norm);
  RandomSource rng = RandomSource::FromTestSeed(8);
  auto enc = PrivatizeForSecAgg(x, ring, dp, rng);
  ASSERT_TRUE(enc.ok()) << enc.status();
  ASSERT_EQ(enc->size(), 70656u);
  auto dec = DecodeAggregate(*enc, ring, dp, d);
  ASSERT_TRUE(dec.ok()) << dec.status();
  ASSERT_EQ(dec->size(), d);
  std::vector<float> error(d);
  for (size_t i = 0; i < d; ++i) error[i] = (*dec)[i] - x[i];
  EXPECT_LE(Norm(error), std::sqrt(70656.0) / ring.scale);
  EXPECT_NEAR((*dec)[12345], 0.2f, 1e-4f);
  // The coordinator refuses a sum of the wrong length.
  EXPECT_FALSE(DecodeAggregate(std::span<const uint32_t>(enc->data(), d), ring, dp, d).ok());
}

// 50 clients, known inputs, SecAgg+ and distributed DP together: the decoded
// sum minus the true sum of clipped inputs has mean 0 and standard deviation
// z S per coordinate. With m = 4096 coordinates the sample variance is within
// 5 standard errors (5 sqrt(2 / m) = 11%) of (z S)^2.
TEST(DpMechanismsTest, SecAggWithDistributedNoiseHasTheConfiguredSigma) {
  const uint32_t n = 50;
  const size_t d = 4000;
  secagg::RingConfig ring;
  ring.bits = 32;
  ring.clip_norm = 1.0;
  ring.max_summands = n;
  ring.scale = 1 << 16;
  DistributedDpConfig dp;
  dp.noise_multiplier = 0.8;
  dp.min_clients = n;
  dp.rotate = true;
  dp.rotation_seed = 77;
  ASSERT_TRUE(ValidateRingForNoise(ring, dp).ok());
  const size_t m = RotatedLength(d, dp);
  ASSERT_EQ(m, 4096u);
  auto params = secagg::testing::MakeParams(n, n - 1, 30, m, ring.bits);
  secagg::SecAggServer server = *secagg::SecAggServer::Create(params);
  std::map<uint32_t, secagg::SecAggClient> clients;
  std::vector<double> truth(d, 0);
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0, 0.01f);  // norm about 0.63 < S: no clipping
  RandomSource rng = RandomSource::FromTestSeed(123);
  for (uint32_t i = 1; i <= n; ++i) {
    std::vector<float> x(d);
    for (float& v : x) v = normal(gen);
    ASSERT_LT(Norm(x), ring.clip_norm);
    for (size_t e = 0; e < d; ++e) truth[e] += x[e];
    auto enc = PrivatizeForSecAgg(x, ring, dp, rng);
    ASSERT_TRUE(enc.ok()) << enc.status();
    clients.emplace(i, *secagg::SecAggClient::Create(params, i, *enc));
    ASSERT_TRUE(server.Handle(*clients.at(i).Start()).ok());
  }
  for (int round = 0; round < 3; ++round) {
    auto out = round == 0 ? server.FinishKeys() : round == 1 ? server.FinishShares() : server.FinishInputs();
    ASSERT_TRUE(out.ok()) << out.status();
    for (auto& [id, msg] : *out) ASSERT_TRUE(server.Handle(*clients.at(id).Handle(msg)).ok());
  }
  auto sum = server.Finish();
  ASSERT_TRUE(sum.ok()) << sum.status();
  auto decoded = DecodeAggregate(*sum, ring, dp, d);
  ASSERT_TRUE(decoded.ok());
  double mean = 0, var = 0;
  for (size_t e = 0; e < d; ++e) mean += (*decoded)[e] - truth[e];
  mean /= d;
  for (size_t e = 0; e < d; ++e) var += ((*decoded)[e] - truth[e] - mean) * ((*decoded)[e] - truth[e] - mean);
  var /= d - 1;
  const double target = dp.noise_multiplier * ring.clip_norm;
  EXPECT_LT(std::abs(mean), 5 * target / std::sqrt(static_cast<double>(d)));
  EXPECT_NEAR(var / (target * target), 1.0, 5 * std::sqrt(2.0 / d));
}

// One client's rounded update reaches RoundedNormBound in ring units, its
// noise stays z S scale: the accounted multiplier is their ratio.
TEST(DpMechanismsTest, AccountedNoiseMultiplierCountsTheConditionalRoundingBound) {
  secagg::RingConfig ring;
  ring.bits = 16;
  ring.clip_norm = 2.0;
  ring.scale = 1024;
  const double c = 2048.0 * (1 + 0x1p-20);
  const double t = std::sqrt(std::log(1000.0) / 2);  // beta = 1e-3
  const double bound = std::sqrt(c * c + 65536.0 / 4 + t * (2 * c + 256.0));
  EXPECT_DOUBLE_EQ(RoundedNormBound(ring, 65536), bound);
  EXPECT_DOUBLE_EQ(AccountedNoiseMultiplier(1.0, ring, 65536), 2048.0 / bound);
  // About m / (8 c) + t = 5.9 steps above c: 0.3% of z, where plain
  // rounding's sqrt(m) = 256 steps would cost 11%.
  EXPECT_NEAR(AccountedNoiseMultiplier(1.0, ring, 65536), 0.997, 1e-3);
  EXPECT_DOUBLE_EQ(AccountedNoiseMultiplier(0.0, ring, 65536), 0.0);
  ring.bits = 32;
  ring.scale = 1 << 26;
  EXPECT_NEAR(AccountedNoiseMultiplier(0.7, ring, 73728), 0.7, 0.7 * 2e-6);
}

TEST(DpMechanismsTest, CentralNoiseHasTheConfiguredSigma) {
  std::vector<float> sum(20000, 0.0f);
  RandomSource rng = RandomSource::FromTestSeed(8);
  ASSERT_TRUE(AddCentralGaussianNoise(sum, 1.5, 2.0, rng).ok());
  double var = 0;
  for (float x : sum) var += static_cast<double>(x) * x;
  var /= sum.size();
  EXPECT_NEAR(var / 9.0, 1.0, 5 * std::sqrt(2.0 / sum.size()));
  EXPECT_FALSE(AddCentralGaussianNoise(sum, -1, 2.0, rng).ok());
}

TEST(DpMechanismsTest, AdaptiveClippingKnownAnswers) {
  AdaptiveClipping config;  // gamma 0.5, eta 0.2
  // b_bar = 1: every client was under the clip.
  auto c = UpdatedClipNorm(1.0, /*sum of indicators*/ 0.5 * 10, 10, config);
  ASSERT_TRUE(c.ok());
  EXPECT_NEAR(*c, 0.9048374180, 1e-10);
  auto z = AdjustedNoiseMultiplier(1.0, 0.05 * 100);
  ASSERT_TRUE(z.ok());
  EXPECT_NEAR(*z, 1.0050378153, 1e-10);
  EXPECT_EQ(ClipIndicator(0.5, 1.0), 0.5);
  EXPECT_EQ(ClipIndicator(1.5, 1.0), -0.5);
  EXPECT_NEAR(*UpdatedClipNorm(1.0, 0.0, 10, config), 1.0, 1e-12) << "b_bar = gamma: C unchanged";
  EXPECT_FALSE(AdjustedNoiseMultiplier(1.0, 0.4).ok()) << "count noise takes the whole budget";
  EXPECT_FALSE(UpdatedClipNorm(1.0, 0, 0, config).ok());
}

TEST(DpMechanismsTest, BadParametersAreErrors) {
  secagg::RingConfig ring;
  ring.bits = 16;
  ring.clip_norm = 1;
  ring.scale = 1 << 10;
  ring.max_summands = 10;
  DistributedDpConfig dp;
  dp.noise_multiplier = 5;
  dp.min_clients = 10;
  absl::Status s = ValidateRingForNoise(ring, dp);
  EXPECT_NE(s.message().find("can reach"), absl::string_view::npos) << s;
  dp.noise_multiplier = -1;
  EXPECT_FALSE(dp.Validate().ok());
  dp = DistributedDpConfig();
  dp.min_clients = 0;
  EXPECT_FALSE(dp.Validate().ok());
  RandomSource rng = RandomSource::FromTestSeed(1);
  std::vector<float> nan = {1, NAN};
  ring.max_summands = 1;
  EXPECT_FALSE(PrivatizeForSecAgg(nan, ring, DistributedDpConfig(), rng).ok());
}

}  // namespace
}  // namespace fedpers::dp
