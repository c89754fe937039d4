#include <gtest/gtest.h>

#include "secure_agg/secagg_common.h"
#include "tests/secure_agg/secagg_harness.h"

namespace fedpers::secagg {
namespace {

using namespace testing;

TEST(SecAggE2eTest, ThreeClientsNoDropouts) {
  auto params = MakeParams(3, 2, 2, 1000, 16);
  SessionResult r = RunSession(params, {});
  ASSERT_TRUE(r.sum.ok()) << r.sum.status();
  EXPECT_EQ(r.survivors.size(), 3u);
  EXPECT_EQ(*r.sum, r.expected);
}

TEST(SecAggE2eTest, TenClientsWithADropoutAtEveryRound) {
  auto params = MakeParams(10, 9, 5, 5000, 20);
  // 1 never advertises, 2 stops before sharing, 3 before its masked input, 4
  // after its masked input (still counted).
  SessionResult r = RunSession(params, {{1, kBeforeAdvertise}, {2, kBeforeShares}, {3, kBeforeInput}, {4, kBeforeUnmasking}});
  ASSERT_TRUE(r.sum.ok()) << r.sum.status();
  EXPECT_EQ(r.survivors, (std::set<uint32_t>{4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(*r.sum, r.expected);
}

TEST(SecAggE2eTest, ExactlyThresholdSucceedsAndOneFewerAbortsCleanly) {
  auto params = MakeParams(10, 9, 5, 2000, 16);
  // Five respond to unmasking: exactly t.
  std::map<uint32_t, DropPoint> drops = {{6, kBeforeInput}, {7, kBeforeInput}, {8, kBeforeUnmasking},
                                         {9, kBeforeUnmasking}, {10, kBeforeUnmasking}};
  SessionResult r = RunSession(params, drops);
  ASSERT_TRUE(r.sum.ok()) << r.sum.status();
  EXPECT_EQ(*r.sum, r.expected);
  drops[5] = kBeforeUnmasking;  // t - 1 responders
  SessionResult fail = RunSession(params, drops);
  ASSERT_FALSE(fail.sum.ok());
  EXPECT_EQ(fail.sum.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(fail.sum.status().message().find("fewer than the threshold 5"), absl::string_view::npos) << fail.sum.status();
}

TEST(SecAggE2eTest, TooFewMaskedInputsAbortBeforeUnmasking) {
  auto params = MakeParams(6, 5, 4, 100, 16);
  SessionResult r = RunSession(params, {{1, kBeforeInput}, {2, kBeforeInput}, {3, kBeforeInput}});
  ASSERT_FALSE(r.sum.ok());
  EXPECT_NE(r.sum.status().message().find("3 masked inputs, fewer than the threshold 4"), absl::string_view::npos)
      << r.sum.status();
}

TEST(SecAggE2eTest, HundredClientsOnTheSecAggPlusGraph) {
  auto kt = ChooseDegreeAndThreshold(100, SecAggAssumptions{});
  ASSERT_TRUE(kt.ok()) << kt.status();
  EXPECT_LT(kt->degree, 99u) << "sparse graph";
  auto params = MakeParams(100, kt->degree, kt->threshold, 1000, 16);
  std::map<uint32_t, DropPoint> drops;
  for (uint32_t i = 1; i <= 100; i += 10) drops[i] = static_cast<DropPoint>((i / 10) % 4);  // 10% across rounds
  SessionResult r = RunSession(params, drops, 3);
  ASSERT_TRUE(r.sum.ok()) << r.sum.status();
  EXPECT_EQ(*r.sum, r.expected);
}

TEST(SecAggE2eTest, MillionElementVector) {
  auto params = MakeParams(3, 2, 2, 1000000, 32);
  SessionResult r = RunSession(params, {{3, kBeforeUnmasking}});
  ASSERT_TRUE(r.sum.ok()) << r.sum.status();
  EXPECT_EQ(*r.sum, r.expected);
}

TEST(SecAggParamsTest, DegreeAndThresholdFollowTheBounds) {
  for (uint32_t n : {100u, 1000u}) {
    auto kt = ChooseDegreeAndThreshold(n, SecAggAssumptions{});
    ASSERT_TRUE(kt.ok()) << n;
    EXPECT_EQ(kt->degree % 2, 0u);
    EXPECT_GT(kt->threshold, kt->degree / 2) << "t > (k + C) / 2 with C >= 0";
    EXPECT_LE(kt->threshold, kt->degree);
  }
  // Higher dropout needs a larger neighbourhood.
  SecAggAssumptions high;
  high.dropout_rate = 0.3;
  EXPECT_GE(ChooseDegreeAndThreshold(1000, high)->degree, ChooseDegreeAndThreshold(1000, SecAggAssumptions{})->degree);
  EXPECT_EQ(ChooseDegreeAndThreshold(3, SecAggAssumptions{}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(ChooseDegreeAndThreshold(1, SecAggAssumptions{}).ok());
}

TEST(SecAggParamsTest, GraphIsSymmetricAndRegular) {
  auto params = MakeParams(50, 8, 5, 1, 16);
  auto graph = NeighbourGraph(params);
  for (uint32_t i = 1; i <= 50; ++i) {
    EXPECT_EQ(graph[i].size(), 8u);
    for (uint32_t j : graph[i]) {
      EXPECT_NE(i, j);
      EXPECT_TRUE(std::binary_search(graph[j].begin(), graph[j].end(), i)) << i << " " << j;
    }
  }
  EXPECT_EQ(Neighbours(params, 7), graph[7]);
  auto bad = params;
  bad.set_degree(7);  // odd and not n - 1
  EXPECT_FALSE(ValidateParams(bad).ok());
  bad = params;
  bad.set_threshold(10);
  EXPECT_FALSE(ValidateParams(bad).ok());
  bad = params;
  bad.set_graph_seed("short");
  EXPECT_FALSE(ValidateParams(bad).ok());
}

}  // namespace
}  // namespace fedpers::secagg
