#include "coordinator/privacy_ledger.h"

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "secure_agg/dp_accountant.h"

namespace fedpers {
namespace {

std::vector<std::string> Users(int from, int to) {
  std::vector<std::string> u;
  for (int i = from; i < to; ++i) u.push_back("user" + std::to_string(i));
  return u;
}

// What the ledger should charge: `steps` rounds of fixed-size sampling
// without replacement under replace-one neighbours, sensitivity 2 S.
double ReplaceOneEpsilon(double q, double z, int64_t steps) {
  const std::vector<double> orders = dp::DefaultOrders();
  auto rdp = dp::ComputeRdpSampledWithoutReplacement(q, z / 2, steps, orders);
  return dp::EpsilonFromRdp(orders, *rdp, 1e-5)->epsilon;
}

TEST(PrivacyLedgerTest, AlwaysEligibleUserMatchesTheAccountant) {
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  ASSERT_TRUE(ledger.ok());
  const auto all = Users(0, 100);
  for (int r = 1; r <= 50; ++r) ASSERT_TRUE(ledger->RecordRound(r, 0.1, 1.2, 10, all).ok());
  const double expected = ReplaceOneEpsilon(0.1, 1.2, 50);
  EXPECT_NEAR(ledger->epsilon(), expected, 1e-12);
  EXPECT_NEAR(*ledger->UserEpsilon("user7"), expected, 1e-12);
  // Replace-one over a fixed-size sample costs more than the Poisson,
  // add/remove figure at the same z (which is not a bound for this sampling).
  EXPECT_GT(expected, dp::ComputeEpsilon(0.1, 1.2, 50, 1e-5, dp::DefaultOrders())->epsilon);
  EXPECT_EQ(ledger->rounds().size(), 50u);
  EXPECT_EQ(ledger->rounds().back().epsilon_after, ledger->epsilon());
}

TEST(PrivacyLedgerTest, UsersPayOnlyForRoundsTheyCouldJoin) {
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  const auto first = Users(0, 10), second = Users(10, 20), all = Users(0, 20);
  for (int r = 1; r <= 20; ++r) ASSERT_TRUE(ledger->RecordRound(r, 0.2, 1.0, 2, r <= 10 ? first : all).ok());
  const double early = *ledger->UserEpsilon("user3");   // 20 rounds
  const double late = *ledger->UserEpsilon("user15");   // 10 rounds
  EXPECT_GT(early, late);
  EXPECT_NEAR(late, ReplaceOneEpsilon(0.2, 1.0, 10), 1e-12);
  EXPECT_EQ(*ledger->UserEpsilon("nobody"), 0.0);
  EXPECT_EQ(ledger->epsilon(), early);
}

TEST(PrivacyLedgerTest, RefusesARoundOverTheBudget) {
  auto ledger = PrivacyLedger::Create(1e-5, 1.0);
  const auto users = Users(0, 5);
  int r = 0;
  while (ledger->CheckCanOpen(r + 1, 0.1, 6.0, users).ok()) ASSERT_TRUE(ledger->RecordRound(++r, 0.1, 6.0, 2, users).ok());
  EXPECT_GT(r, 0);
  EXPECT_LE(ledger->epsilon(), 1.0);
  absl::Status refused = ledger->CheckCanOpen(r + 1, 0.1, 6.0, users);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("over the budget 1.0000"), absl::string_view::npos) << refused;
  const double before = ledger->epsilon();
  EXPECT_FALSE(ledger->RecordRound(r + 1, 0.1, 6.0, 2, users).ok());
  EXPECT_EQ(ledger->epsilon(), before) << "a refused round changes nothing";
  // New users are still within budget.
  EXPECT_TRUE(ledger->CheckCanOpen(r + 1, 0.1, 6.0, Users(100, 105)).ok());
}

TEST(PrivacyLedgerTest, BadParametersAndSnapshots) {
  EXPECT_FALSE(PrivacyLedger::Create(1.0, 1.0).ok());
  EXPECT_FALSE(PrivacyLedger::Create(1e-5, 0).ok());
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  const auto users = Users(0, 3);
  EXPECT_FALSE(ledger->RecordRound(1, 0.0, 1.0, 1, users).ok()) << "q outside (0, 1]";
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, -1.0, 1, users).ok()) << "z <= 0";
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, 1.0, 9, users).ok()) << "more participants than eligible users";
  ASSERT_TRUE(ledger->RecordRound(1, 0.5, 1.0, 1, users).ok());
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, 1.0, 1, users).ok()) << "round numbers increase";
  auto back = PrivacyLedger::FromJson(ledger->ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->epsilon(), ledger->epsilon());
  EXPECT_EQ(back->rounds().size(), 1u);
  EXPECT_EQ(*back->UserEpsilon("user1"), *ledger->UserEpsilon("user1"));
  EXPECT_FALSE(PrivacyLedger::FromJson("{").ok());
  EXPECT_FALSE(PrivacyLedger::FromJson(R"({"delta": 1e-5})").ok());
}

// A snapshot without an accounting name was written when the ledger
// accounted Poisson sampling: restoring it charges every stored user every
// stored round under the current accounting. One naming another accounting
// is refused.
TEST(PrivacyLedgerTest, LegacySnapshotsAreRechargedAndForeignOnesRefused) {
  auto ledger = PrivacyLedger::Create(1e-5, 1000.0);
  const auto users = Users(0, 4);
  ASSERT_TRUE(ledger->RecordRound(1, 0.5, 4.0, 2, users).ok());
  ASSERT_TRUE(ledger->RecordRound(2, 0.5, 4.0, 2, users).ok());
  nlohmann::json legacy = nlohmann::json::parse(ledger->ToJson());
  ASSERT_TRUE(legacy.contains("accounting"));
  legacy.erase("accounting");
  for (auto& [user, rdp] : legacy["users"].items()) {
    for (auto& v : rdp) v = v.get<double>() / 10;  // what an undercounting accountant stored
  }
  auto restored = PrivacyLedger::FromJson(legacy.dump());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_NEAR(restored->epsilon(), ReplaceOneEpsilon(0.5, 4.0, 2), 1e-12);
  EXPECT_NEAR(*restored->UserEpsilon("user2"), ReplaceOneEpsilon(0.5, 4.0, 2), 1e-12);
  // Written back, it names the accounting and round-trips unchanged.
  auto again = PrivacyLedger::FromJson(restored->ToJson());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->epsilon(), restored->epsilon());
  legacy["accounting"] = "something else";
  auto foreign = PrivacyLedger::FromJson(legacy.dump());
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(foreign.status().message().find("something else"), absl::string_view::npos) << foreign.status();
}

}  // namespace
}  // namespace fedpers
