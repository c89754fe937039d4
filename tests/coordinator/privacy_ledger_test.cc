#include "coordinator/privacy_ledger.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "nlohmann/json.hpp"
#include "secure_agg/dp_accountant.h"

namespace fedpers {
namespace {

// The first n of `users`, as a round's contributors.
std::vector<std::string> First(const std::vector<std::string>& users, int n) {
  return std::vector<std::string>(users.begin(), users.begin() + std::min<size_t>(users.size(), n));
}

std::vector<std::string> Users(int from, int to) {
  std::vector<std::string> u;
  for (int i = from; i < to; ++i) u.push_back("user" + std::to_string(i));
  return u;
}

constexpr dp::SampledNoise kGaussian = dp::SampledNoise::kGaussian;
constexpr dp::SampledNoise kDominated = dp::SampledNoise::kGaussianDominated;

// What the ledger should charge: `steps` rounds of fixed-size sampling
// without replacement under replace-one neighbours, sensitivity 2 S.
double ReplaceOneEpsilon(double q, double z, int64_t steps, dp::SampledNoise noise = kGaussian) {
  const std::vector<double> orders = dp::DefaultOrders();
  auto rdp = dp::ComputeRdpSampledWithoutReplacement(q, z / 2, noise, steps, orders);
  return dp::EpsilonFromRdp(orders, *rdp, 1e-5)->epsilon;
}

TEST(PrivacyLedgerTest, AlwaysEligibleUserMatchesTheAccountant) {
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  ASSERT_TRUE(ledger.ok());
  const auto all = Users(0, 100);
  for (int r = 1; r <= 50; ++r)
    ASSERT_TRUE(ledger->RecordRound(r, 0.1, 1.2, kGaussian, 1.2, First(all, 10), all).ok());
  const double expected = ReplaceOneEpsilon(0.1, 1.2, 50);
  EXPECT_NEAR(ledger->epsilon(), expected, 1e-12);
  EXPECT_NEAR(*ledger->UserEpsilon("user7"), expected, 1e-12);
  // Replace-one over a fixed-size sample costs more than the Poisson,
  // add/remove figure at the same z (which is not a bound for this sampling).
  EXPECT_GT(expected, dp::ComputeEpsilon(0.1, 1.2, 50, 1e-5, dp::DefaultOrders())->epsilon);
  EXPECT_EQ(ledger->rounds().size(), 50u);
  EXPECT_EQ(ledger->rounds().back().epsilon_after, ledger->epsilon());
}

// The budget against the coordinator (no amplification: RDP a rho per
// contributed round, rho = 2 / z_c^2) refuses a round that could take any
// eligible user over it, whoever is sampled; users who contributed nothing
// may still be sampled; unknown (older snapshot) or z_c = 0 refuses.
TEST(PrivacyLedgerTest, BudgetAgainstTheCoordinatorRefusesRoundsThatCouldExceedIt) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  auto ledger = PrivacyLedger::Create(1e-5, kInf);
  ASSERT_TRUE(ledger.ok());
  EXPECT_EQ(ledger->SetPolicy(1e-5, kInf, 0).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(ledger->SetPolicy(1e-5, kInf, 2.0).ok());
  const auto users = Users(0, 10);
  int r = 0;
  while (ledger->CheckCanOpen(r + 1, 0.5, 20.0, kDominated, 20.0, users).ok()) {
    ASSERT_TRUE(ledger->RecordRound(r + 1, 0.5, 20.0, kDominated, 20.0, users, users).ok());
    ASSERT_LT(++r, 100000);
  }
  // Every round charged every user 2 / 400; the next would cross 2.
  const std::vector<double> orders = dp::DefaultOrders();
  auto epsilon_of_rho = [&](double rho) {
    std::vector<double> rdp;
    for (double a : orders) rdp.push_back(a * rho);
    return dp::EpsilonFromRdp(orders, rdp, 1e-5)->epsilon;
  };
  ASSERT_GT(r, 0);
  EXPECT_NEAR(*ledger->epsilon_against_coordinator(), epsilon_of_rho(r * 0.005), 1e-12);
  EXPECT_LE(epsilon_of_rho(r * 0.005), 2.0);
  EXPECT_GT(epsilon_of_rho((r + 1) * 0.005), 2.0);
  absl::Status refused = ledger->CheckCanOpen(r + 1, 0.5, 20.0, kDominated, 20.0, users);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("epsilon against the coordinator"), absl::string_view::npos) << refused;
  EXPECT_NE(refused.message().find("over the budget 2.0000"), absl::string_view::npos) << refused;
  // One spent user among fresh ones is enough to refuse; fresh ones alone are not.
  std::vector<std::string> mixed = Users(100, 110);
  mixed.push_back("user3");
  EXPECT_FALSE(ledger->CheckCanOpen(r + 1, 0.5, 20.0, kDominated, 20.0, mixed).ok());
  EXPECT_TRUE(ledger->CheckCanOpen(r + 1, 0.5, 20.0, kDominated, 20.0, Users(100, 110)).ok());
  EXPECT_FALSE(ledger->RecordRound(r + 1, 0.5, 20.0, kDominated, 20.0, users, users).ok());
  EXPECT_EQ(ledger->rounds().size(), static_cast<size_t>(r)) << "a refused round changes nothing";
  EXPECT_FALSE(ledger->CheckCanOpen(r + 1, 0.5, 20.0, kGaussian, 0.0, Users(100, 110)).ok())
      << "central noise hides nothing from the coordinator";
  // A ledger that does not know the contributions cannot check the budget.
  nlohmann::json old = nlohmann::json::parse(ledger->ToJson());
  old["coordinator_rho"] = nullptr;
  auto restored = PrivacyLedger::FromJson(old.dump());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_TRUE(restored->CheckCanOpen(r + 1, 0.5, 20.0, kDominated, 20.0, Users(100, 110)).ok())
      << "no budget against the coordinator after a restore until one is set";
  ASSERT_TRUE(restored->SetPolicy(1e-5, kInf, 1e9).ok());
  absl::Status unknown = restored->CheckCanOpen(r + 1, 0.5, 20.0, kDominated, 20.0, Users(100, 110));
  EXPECT_EQ(unknown.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unknown.message().find("is unknown"), absl::string_view::npos) << unknown;
}

// SetPolicy's new delta gives exactly the epsilon of a ledger kept at that
// delta from the start (the RDP sums do not depend on it).
TEST(PrivacyLedgerTest, ANewDeltaRecomputesEpsilonExactly) {
  auto at_start = PrivacyLedger::Create(1e-3, 100.0);
  auto changed = PrivacyLedger::Create(1e-5, 100.0);
  const auto all = Users(0, 50);
  for (int r = 1; r <= 20; ++r) {
    ASSERT_TRUE(at_start->RecordRound(r, 0.2, 1.5, kDominated, 1.5, First(all, 10), all).ok());
    ASSERT_TRUE(changed->RecordRound(r, 0.2, 1.5, kDominated, 1.5, First(all, 10), all).ok());
  }
  ASSERT_GT(changed->epsilon(), at_start->epsilon());
  ASSERT_TRUE(changed->SetPolicy(1e-3, 100.0, std::numeric_limits<double>::infinity()).ok());
  EXPECT_EQ(changed->epsilon(), at_start->epsilon());
  EXPECT_EQ(*changed->UserEpsilon("user3"), *at_start->UserEpsilon("user3"));
  EXPECT_EQ(*changed->epsilon_against_coordinator(), *at_start->epsilon_against_coordinator());
  EXPECT_EQ(changed->SetPolicy(1.0, 100.0, 5.0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(changed->delta(), 1e-3) << "a refused policy changes nothing";
}

TEST(PrivacyLedgerTest, UsersPayOnlyForRoundsTheyCouldJoin) {
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  const auto first = Users(0, 10), second = Users(10, 20), all = Users(0, 20);
  for (int r = 1; r <= 20; ++r) {
    const std::vector<std::string>& eligible = r <= 10 ? first : all;
    ASSERT_TRUE(ledger->RecordRound(r, 0.2, 1.0, kGaussian, 1.0, First(eligible, 2), eligible).ok());
  }
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
  while (ledger->CheckCanOpen(r + 1, 0.1, 6.0, kGaussian, 0, users).ok()) {
    ASSERT_TRUE(ledger->RecordRound(++r, 0.1, 6.0, kGaussian, 6.0, First(users, 2), users).ok());
  }
  EXPECT_GT(r, 0);
  EXPECT_LE(ledger->epsilon(), 1.0);
  absl::Status refused = ledger->CheckCanOpen(r + 1, 0.1, 6.0, kGaussian, 0, users);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("over the budget 1.0000"), absl::string_view::npos) << refused;
  const double before = ledger->epsilon();
  EXPECT_FALSE(ledger->RecordRound(r + 1, 0.1, 6.0, kGaussian, 6.0, First(users, 2), users).ok());
  EXPECT_EQ(ledger->epsilon(), before) << "a refused round changes nothing";
  // New users are still within budget.
  EXPECT_TRUE(ledger->CheckCanOpen(r + 1, 0.1, 6.0, kGaussian, 0, Users(100, 105)).ok());
}

// Rounds whose noise a Gaussian only dominates (the clients' discrete
// shares) cost Theorem 9's bound; the ledger composes the two kinds per
// round, and a snapshot keeps each round's kind. A missing or unknown kind
// is refused.
TEST(PrivacyLedgerTest, EachRoundIsChargedForItsNoise) {
  auto ledger = PrivacyLedger::Create(1e-5, 1e9);
  ASSERT_TRUE(ledger.ok());
  const auto users = Users(0, 100);
  const std::vector<double> orders = dp::DefaultOrders();
  std::vector<double> expected(orders.size(), 0.0);
  for (int r = 1; r <= 30; ++r) {
    const dp::SampledNoise noise = r % 3 == 0 ? kGaussian : kDominated;
    ASSERT_TRUE(ledger->RecordRound(r, 0.05, 10.0, noise, 10.0, First(users, 5), users).ok());
    const auto round = *dp::ComputeRdpSampledWithoutReplacement(0.05, 5.0, noise, 1, orders);
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += round[i];
  }
  const double want = dp::EpsilonFromRdp(orders, expected, 1e-5)->epsilon;
  EXPECT_NEAR(ledger->epsilon(), want, 1e-12 * want);
  // Here the dominated bound costs clearly more than the Gaussian one.
  EXPECT_GT(ReplaceOneEpsilon(0.05, 10.0, 30, kDominated), 1.2 * ReplaceOneEpsilon(0.05, 10.0, 30));
  EXPECT_LT(ledger->epsilon(), ReplaceOneEpsilon(0.05, 10.0, 30, kDominated));
  EXPECT_GT(ledger->epsilon(), ReplaceOneEpsilon(0.05, 10.0, 30));

  nlohmann::json snapshot = nlohmann::json::parse(ledger->ToJson());
  EXPECT_EQ(snapshot["rounds"][0]["noise"], "gaussian-dominated");
  EXPECT_EQ(snapshot["rounds"][2]["noise"], "gaussian");
  auto restored = PrivacyLedger::FromJson(snapshot.dump());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->epsilon(), ledger->epsilon());
  for (size_t r = 0; r < 30; ++r) EXPECT_EQ(restored->rounds()[r].noise, ledger->rounds()[r].noise) << r;

  // Under the current accounting every round must say its noise.
  nlohmann::json unnamed = snapshot;
  unnamed["rounds"][0].erase("noise");
  EXPECT_EQ(PrivacyLedger::FromJson(unnamed.dump()).status().code(), absl::StatusCode::kDataLoss);

  nlohmann::json unknown = snapshot;
  unknown["rounds"][1]["noise"] = "laplace";
  auto refused = PrivacyLedger::FromJson(unknown.dump());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(refused.status().message().find("round 2 names unknown noise 'laplace'"), absl::string_view::npos)
      << refused.status();
}

// Epsilon at delta 1e-5 of RDP a rho at every default order.
double EpsilonOfRho(double rho) {
  const std::vector<double> orders = dp::DefaultOrders();
  std::vector<double> rdp;
  for (double a : orders) rdp.push_back(a * rho);
  return dp::EpsilonFromRdp(orders, rdp, 1e-5)->epsilon;
}

// Against the coordinator, which knows the sample, a user pays the
// unamplified Gaussian, 2 a / z_c^2 in RDP, for each round they contributed
// to, and nothing for the others; a round whose noise the coordinator added
// itself leaves its contributors unprotected against it.
TEST(PrivacyLedgerTest, EpsilonAgainstTheCoordinatorCountsContributedRounds) {
  auto ledger = PrivacyLedger::Create(1e-5, 1e9);
  ASSERT_TRUE(ledger.ok());
  const auto users = Users(0, 20);
  EXPECT_EQ(ledger->epsilon_against_coordinator(), 0.0);
  // Round r's contributors: users r % 4, r % 4 + 4, ..., all eligible.
  std::map<std::string, double> rho;
  for (int r = 1; r <= 12; ++r) {
    std::vector<std::string> contributors;
    for (int u = r % 4; u < 20; u += 4) contributors.push_back(users[static_cast<size_t>(u)]);
    const double coordinator_z = r % 2 == 0 ? 20.0 : 20.0 / std::sqrt(8.0);  // a SecAgg+ sum; one of 8 shares
    ASSERT_TRUE(ledger->RecordRound(r, 0.25, 20.0, kDominated, coordinator_z, contributors, users).ok());
    for (const std::string& user : contributors) rho[user] += 2 / (coordinator_z * coordinator_z);
  }
  double worst = 0;
  for (const auto& [user, value] : rho) {
    EXPECT_NEAR(*ledger->UserEpsilonAgainstCoordinator(user), EpsilonOfRho(value), 1e-12) << user;
    worst = std::max(worst, EpsilonOfRho(value));
  }
  EXPECT_NEAR(*ledger->epsilon_against_coordinator(), worst, 1e-12);
  EXPECT_GT(*ledger->epsilon_against_coordinator(), ledger->epsilon()) << "no amplification against it";
  EXPECT_EQ(*ledger->UserEpsilonAgainstCoordinator("nobody"), 0.0);

  // The snapshot keeps it, and the round's coordinator-facing multiplier.
  auto restored = PrivacyLedger::FromJson(ledger->ToJson());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->epsilon_against_coordinator(), ledger->epsilon_against_coordinator());
  EXPECT_EQ(restored->rounds()[0].coordinator_noise_multiplier, 20.0 / std::sqrt(8.0));

  // Central noise: nothing hides user3 from the coordinator any more.
  const std::vector<std::string> central = {"user3"};
  ASSERT_TRUE(ledger->RecordRound(13, 0.25, 20.0, kGaussian, 0.0, central, users).ok());
  EXPECT_TRUE(std::isinf(*ledger->UserEpsilonAgainstCoordinator("user3")));
  EXPECT_TRUE(std::isinf(*ledger->epsilon_against_coordinator()));
  EXPECT_FALSE(std::isinf(*ledger->UserEpsilonAgainstCoordinator("user2")));
  nlohmann::json snapshot = nlohmann::json::parse(ledger->ToJson());
  EXPECT_EQ(snapshot["coordinator_rho"]["user3"], "inf");
  auto again = PrivacyLedger::FromJson(snapshot.dump());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(std::isinf(*again->epsilon_against_coordinator()));
  EXPECT_EQ(again->UserEpsilonAgainstCoordinator("user2"), ledger->UserEpsilonAgainstCoordinator("user2"));
  snapshot["coordinator_rho"]["user2"] = -1;
  EXPECT_EQ(PrivacyLedger::FromJson(snapshot.dump()).status().code(), absl::StatusCode::kDataLoss);
  snapshot["coordinator_rho"]["user2"] = "lots";
  EXPECT_EQ(PrivacyLedger::FromJson(snapshot.dump()).status().code(), absl::StatusCode::kDataLoss);
  snapshot["coordinator_rho"]["user2"] = nullptr;
  EXPECT_EQ(PrivacyLedger::FromJson(snapshot.dump()).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(EpsilonToJson(std::nullopt), nullptr);
  EXPECT_EQ(EpsilonToJson(std::numeric_limits<double>::infinity()), "inf");
  EXPECT_EQ(EpsilonToJson(1.5), 1.5);
}

// A sum released without noise hides nobody who may be in it: every
// eligible user's epsilon is infinite, and the contributors' against the
// coordinator. Only an infinite budget allows such a round; snapshots keep
// the infinities.
TEST(PrivacyLedgerTest, ARoundWithoutNoiseMakesEveryEligibleUsersEpsilonInfinite) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  auto ledger = PrivacyLedger::Create(1e-5, kInf);
  ASSERT_TRUE(ledger.ok());
  const auto all = Users(0, 6), eligible = Users(0, 4);
  ASSERT_TRUE(ledger->RecordRound(1, 0.5, 2.0, kDominated, 2.0, First(all, 3), all).ok());
  const double before = ledger->epsilon();
  ASSERT_TRUE(std::isfinite(before));
  ASSERT_TRUE(ledger->RecordRound(2, 0.5, 0.0, kDominated, 0.0, First(eligible, 2), eligible).ok());
  EXPECT_EQ(ledger->epsilon(), kInf);
  EXPECT_EQ(ledger->rounds().back().epsilon_after, kInf);
  EXPECT_EQ(*ledger->UserEpsilon("user3"), kInf) << "eligible: the sample is hidden, not its absence";
  EXPECT_EQ(*ledger->UserEpsilon("user5"), before) << "not eligible in the round without noise";
  EXPECT_EQ(*ledger->UserEpsilonAgainstCoordinator("user1"), kInf);
  EXPECT_TRUE(std::isfinite(*ledger->UserEpsilonAgainstCoordinator("user2"))) << "not in the sum";

  const std::string text = ledger->ToJson();
  nlohmann::json snapshot = nlohmann::json::parse(text);
  EXPECT_EQ(snapshot["rounds"][1]["epsilon_after"], "inf");
  EXPECT_NE(text.find(R"("inf")"), std::string::npos);
  EXPECT_EQ(text.find("null"), std::string::npos) << "JSON's null for an infinity would read back as unknown";
  auto restored = PrivacyLedger::FromJson(text);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->epsilon(), kInf);
  EXPECT_EQ(*restored->UserEpsilon("user3"), kInf);
  EXPECT_EQ(*restored->UserEpsilon("user5"), before);
  EXPECT_EQ(restored->rounds().back().epsilon_after, kInf);
  for (const nlohmann::json& bad : {nlohmann::json(-1.0), nlohmann::json("lots"), nlohmann::json(nullptr)}) {
    nlohmann::json damaged = snapshot;
    damaged["accounts"][0][0] = bad;
    EXPECT_EQ(PrivacyLedger::FromJson(damaged.dump()).status().code(), absl::StatusCode::kDataLoss) << bad;
    damaged = snapshot;
    damaged["rounds"][0]["epsilon_after"] = bad;
    EXPECT_EQ(PrivacyLedger::FromJson(damaged.dump()).status().code(), absl::StatusCode::kDataLoss) << bad;
  }

  // A round the snapshot missed (an older build skipped the ledger without
  // noise) is charged afterwards: user4 joins the infinite account, user5
  // keeps its own.
  ledger->ChargeUnrecordedRoundWithoutNoise(Users(4, 5), Users(4, 5));
  EXPECT_EQ(*ledger->UserEpsilon("user4"), kInf);
  EXPECT_EQ(*ledger->UserEpsilonAgainstCoordinator("user4"), kInf);
  EXPECT_EQ(*ledger->UserEpsilon("user5"), before);
  EXPECT_EQ(ledger->num_accounts(), 2u) << "the infinite accounts merged";
  EXPECT_FALSE(ledger->MayMissRoundsWithoutNoise());

  // Under a finite budget the round is refused and nothing changes.
  auto budgeted = PrivacyLedger::Create(1e-5, 1000.0);
  ASSERT_TRUE(budgeted.ok());
  ASSERT_TRUE(budgeted->RecordRound(1, 0.5, 2.0, kDominated, 2.0, First(all, 3), all).ok());
  const std::string kept = budgeted->ToJson();
  absl::Status refused = budgeted->CheckCanOpen(2, 0.5, 0.0, kDominated, 0.0, eligible);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.message().find("to inf, over the budget 1000"), absl::string_view::npos) << refused;
  EXPECT_EQ(budgeted->RecordRound(2, 0.5, 0.0, kDominated, 0.0, First(eligible, 2), eligible).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(budgeted->ToJson(), kept);
}

TEST(PrivacyLedgerTest, BadParametersAndSnapshots) {
  EXPECT_FALSE(PrivacyLedger::Create(1.0, 1.0).ok());
  EXPECT_FALSE(PrivacyLedger::Create(1e-5, 0).ok());
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  const auto users = Users(0, 3);
  EXPECT_FALSE(ledger->RecordRound(1, 0.0, 1.0, kGaussian, 1.0, First(users, 1), users).ok())
      << "q outside (0, 1]";
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, -1.0, kGaussian, -1.0, First(users, 1), users).ok()) << "z <= 0";
  const std::vector<std::string> stranger = {"user7"};
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, 1.0, kGaussian, 1.0, stranger, users).ok())
      << "a contributor not eligible";
  const std::vector<std::string> twice_in = {"user1", "user1"};
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, 1.0, kGaussian, 1.0, twice_in, users).ok())
      << "a contributor twice";
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, 1.0, kGaussian, -1.0, First(users, 1), users).ok())
      << "coordinator z < 0";
  ASSERT_TRUE(ledger->RecordRound(1, 0.5, 1.0, kGaussian, 1.0, First(users, 1), users).ok());
  EXPECT_FALSE(ledger->RecordRound(1, 0.5, 1.0, kGaussian, 1.0, First(users, 1), users).ok())
      << "round numbers increase";
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
// stored round under the current accounting, with the bound that holds
// whatever noise those rounds added. One naming another accounting is
// refused.
TEST(PrivacyLedgerTest, LegacySnapshotsAreRechargedAndForeignOnesRefused) {
  auto ledger = PrivacyLedger::Create(1e-5, 1000.0);
  const auto users = Users(0, 4);
  ASSERT_TRUE(ledger->RecordRound(1, 0.5, 10.0, kGaussian, 10.0, First(users, 2), users).ok());
  ASSERT_TRUE(ledger->RecordRound(2, 0.5, 10.0, kGaussian, 10.0, First(users, 2), users).ok());
  // The snapshot as written then: one RDP vector per user, no accounting.
  nlohmann::json legacy = nlohmann::json::parse(ledger->ToJson());
  ASSERT_TRUE(legacy.contains("accounting"));
  legacy.erase("accounting");
  const std::vector<double> shared = legacy["accounts"][0].get<std::vector<double>>();
  legacy.erase("accounts");
  for (auto& [user, rdp] : legacy["users"].items()) {
    rdp = shared;
    for (auto& v : rdp) v = v.get<double>() / 10;  // what an undercounting accountant stored
  }
  auto restored = PrivacyLedger::FromJson(legacy.dump());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_NEAR(restored->epsilon(), ReplaceOneEpsilon(0.5, 10.0, 2, kDominated), 1e-12);
  EXPECT_NEAR(*restored->UserEpsilon("user2"), ReplaceOneEpsilon(0.5, 10.0, 2, kDominated), 1e-12);
  EXPECT_GT(ReplaceOneEpsilon(0.5, 10.0, 2, kDominated), ReplaceOneEpsilon(0.5, 10.0, 2))
      << "the case tells them apart";
  EXPECT_EQ(restored->rounds()[0].noise, kDominated);
  // Written back, it names the accounting and round-trips unchanged.
  auto again = PrivacyLedger::FromJson(restored->ToJson());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->epsilon(), restored->epsilon());
  legacy["accounting"] = "something else";
  auto foreign = PrivacyLedger::FromJson(legacy.dump());
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(foreign.status().message().find("something else"), absl::string_view::npos) << foreign.status();
}

// Every user's sums, kept one vector per user as the ledger did before
// accounts: the reference the shared accounts must match exactly.
struct PerUserReference {
  std::map<std::string, std::vector<double>> rdp;
  void Record(double q, double z, const std::vector<std::string>& eligible,
              dp::SampledNoise noise = kGaussian) {
    const std::vector<double> orders = dp::DefaultOrders();
    const std::vector<double> round = *dp::ComputeRdpSampledWithoutReplacement(q, z / 2, noise, 1, orders);
    for (const std::string& user : eligible) {
      std::vector<double>& acc = rdp[user];
      acc.resize(orders.size(), 0.0);
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += round[i];
    }
  }
  double Epsilon(const std::string& user) const {
    auto it = rdp.find(user);
    if (it == rdp.end()) return 0;
    return dp::EpsilonFromRdp(dp::DefaultOrders(), it->second, 1e-5)->epsilon;
  }
};

// Users join in cohorts, drop out and return at random, under two noise
// levels: every user's epsilon equals the per-user sum's bit for bit, before
// and after a snapshot round trip, and the ledger epsilon is their maximum.
TEST(PrivacyLedgerTest, SharedAccountsChargeExactlyThePerUserSums) {
  auto ledger = PrivacyLedger::Create(1e-5, 1e9);
  ASSERT_TRUE(ledger.ok());
  PerUserReference reference;
  std::mt19937_64 gen(7);
  const auto everyone = Users(0, 60);
  for (int r = 1; r <= 40; ++r) {
    std::vector<std::string> eligible;
    const int joined = std::min(60, 15 * ((r + 9) / 10));  // cohorts of 15 every 10 rounds
    for (int u = 0; u < joined; ++u) {
      if (u % 3 != 0 || gen() % 4 != 0) eligible.push_back(everyone[static_cast<size_t>(u)]);  // some skip rounds
    }
    std::shuffle(eligible.begin(), eligible.end(), gen);
    const double z = r % 7 == 0 ? 2.0 : 1.0;
    const double q = 5.0 / static_cast<double>(eligible.size());
    ASSERT_TRUE(ledger->RecordRound(r, q, z, kGaussian, z, First(eligible, 5), eligible).ok());
    reference.Record(q, z, eligible);
  }
  EXPECT_EQ(ledger->num_users(), 60u);
  EXPECT_LT(ledger->num_accounts(), 60u) << "users with the same history share an account";
  EXPECT_GT(ledger->num_accounts(), 4u) << "the random skips give different histories";
  auto restored = PrivacyLedger::FromJson(ledger->ToJson());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->num_accounts(), ledger->num_accounts());
  double worst = 0;
  for (const std::string& user : everyone) {
    const double expected = reference.Epsilon(user);
    worst = std::max(worst, expected);
    EXPECT_EQ(*ledger->UserEpsilon(user), expected) << user;
    EXPECT_EQ(*restored->UserEpsilon(user), expected) << user;
  }
  EXPECT_EQ(ledger->epsilon(), worst);
  EXPECT_EQ(restored->epsilon(), worst);
}

// With every user eligible in every round, the ledger holds one account and
// a snapshot grows by a user id and an index per user, not by the RDP vector
// of 151 orders (about 3 KB of JSON) each.
TEST(PrivacyLedgerTest, SnapshotGrowsByAUserIdPerUser) {
  auto ledger = PrivacyLedger::Create(1e-5, 1e9);
  ASSERT_TRUE(ledger.ok());
  const auto users = Users(0, 5000);
  for (int r = 1; r <= 5; ++r)
    ASSERT_TRUE(ledger->RecordRound(r, 0.002, 1.0, kGaussian, 1.0, First(users, 10), users).ok());
  EXPECT_EQ(ledger->num_accounts(), 1u);
  const std::string json = ledger->ToJson();
  EXPECT_LT(json.size(), 5000u * 16 + 8192) << "\"user1234\":0, per user plus one account";
  auto restored = PrivacyLedger::FromJson(json);
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->num_users(), 5000u);
  EXPECT_EQ(restored->epsilon(), ledger->epsilon());
}

// A snapshot written before rounds recorded their noise charged every round
// with the Gaussian's bound. Restored, every stored user is charged what the
// bound that holds for either noise costs more, for every stored round (the
// snapshot does not say who was eligible when). This one also has one RDP
// vector per user (written before accounts): equal vectors are merged.
TEST(PrivacyLedgerTest, SnapshotsBeforeRoundsRecordedTheirNoiseAreRecharged) {
  PerUserReference stored, expected;
  const auto first = Users(0, 4), all = Users(0, 8);
  stored.Record(0.5, 10.0, first);
  stored.Record(0.25, 10.0, all);
  expected.Record(0.5, 10.0, all, kDominated);
  expected.Record(0.25, 10.0, all, kDominated);
  for (const std::string& user : Users(4, 8)) {
    // What these users were charged for round 1, where they were not eligible.
    PerUserReference gaussian;
    gaussian.Record(0.5, 10.0, {user});
    for (size_t i = 0; i < expected.rdp[user].size(); ++i) expected.rdp[user][i] -= gaussian.rdp[user][i];
  }
  nlohmann::json old = {
      {"delta", 1e-5},
      {"budget", "inf"},
      {"orders", dp::DefaultOrders()},
      {"accounting", "fixed-size sampling without replacement, replace-one neighbours"},
      {"users", stored.rdp},
      {"rounds",
       {{{"round", 1}, {"q", 0.5}, {"z", 10.0}, {"participants", 2}, {"eligible", 4}, {"epsilon_after", 0.0}},
        {{"round", 2},
         {"q", 0.25},
         {"z", 10.0},
         {"participants", 2},
         {"eligible", 8},
         {"epsilon_after", 0.0}}}}};
  auto restored = PrivacyLedger::FromJson(old.dump());
  ASSERT_TRUE(restored.ok()) << restored.status();
  EXPECT_EQ(restored->num_accounts(), 2u);
  for (const std::string user : {"user1", "user6"}) {
    EXPECT_NEAR(*restored->UserEpsilon(user), expected.Epsilon(user), 1e-12) << user;
    EXPECT_GT(*restored->UserEpsilon(user), 1.01 * stored.Epsilon(user))
        << user << ": the case tells them apart";
  }
  EXPECT_NEAR(restored->epsilon(), expected.Epsilon("user1"), 1e-12);
  for (const LedgerRound& r : restored->rounds()) EXPECT_EQ(r.noise, kDominated) << r.round;
  EXPECT_EQ(restored->epsilon_against_coordinator(), std::nullopt) << "it did not record contributions";
  // It goes on from there like a ledger that recorded the rounds itself.
  ASSERT_TRUE(restored->RecordRound(3, 0.25, 10.0, kGaussian, 10.0, First(all, 2), all).ok());
  expected.Record(0.25, 10.0, all);
  EXPECT_NEAR(*restored->UserEpsilon("user2"), expected.Epsilon("user2"), 1e-12);
  EXPECT_NEAR(*restored->UserEpsilon("user7"), expected.Epsilon("user7"), 1e-12);
  // Written back under the current accounting, it round-trips unchanged,
  // still without a figure against the coordinator.
  auto again = PrivacyLedger::FromJson(restored->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->epsilon(), restored->epsilon());
  EXPECT_EQ(again->epsilon_against_coordinator(), std::nullopt);
}

TEST(PrivacyLedgerTest, DamagedAccountsAndDuplicateUsersAreRefused) {
  auto ledger = PrivacyLedger::Create(1e-5, 100.0);
  ASSERT_TRUE(ledger.ok());
  const std::vector<std::string> twice = {"a", "b", "a"};
  absl::Status dup = ledger->RecordRound(1, 0.5, 1.0, kGaussian, 1.0, First(twice, 1), twice);
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dup.message().find("'a' is listed twice"), absl::string_view::npos) << dup;
  EXPECT_TRUE(ledger->rounds().empty()) << "a refused round changes nothing";
  ASSERT_TRUE(ledger->RecordRound(1, 0.5, 1.0, kGaussian, 1.0, First(Users(0, 3), 1), Users(0, 3)).ok());
  const nlohmann::json good = nlohmann::json::parse(ledger->ToJson());
  {
    nlohmann::json bad = good;
    bad["users"]["user1"] = 5;
    auto r = PrivacyLedger::FromJson(bad.dump());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find("user 'user1' names account 5 of 1"), absl::string_view::npos) << r.status();
  }
  {
    nlohmann::json bad = good;
    bad["users"]["user1"] = 0.5;
    EXPECT_EQ(PrivacyLedger::FromJson(bad.dump()).status().code(), absl::StatusCode::kDataLoss);
  }
  {
    nlohmann::json bad = good;
    bad["accounts"][0].erase(0);
    auto r = PrivacyLedger::FromJson(bad.dump());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find("account 0 has the wrong length"), absl::string_view::npos) << r.status();
  }
  {
    nlohmann::json bad = good;
    bad["accounts"][0][3] = "x";
    EXPECT_EQ(PrivacyLedger::FromJson(bad.dump()).status().code(), absl::StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace fedpers
