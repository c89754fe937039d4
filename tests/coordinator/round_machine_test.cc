#include "coordinator/round_machine.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "secure_agg/secagg_client.h"

namespace fedpers {
namespace {

using fedpers::v1::SecAggClientMessage;

std::string FreshDir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/rounds_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

FlatLayout Layout() { return *FlatLayout::Create({{"a.lora_B_global", {10, 4}}, {"b.lora_B_global", {7, 4}}}); }

// Simulated clients: each has a fixed update vector and runs the real
// pipeline (privatize, SecAgg+) from its invitation.
struct Fleet {
  std::map<std::string, std::vector<float>> updates;
  std::map<std::string, secagg::SecAggClient> sessions;
  dp::RandomSource rng = dp::RandomSource::FromTestSeed(5);

  explicit Fleet(int n, size_t d, uint64_t seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0, 0.05f);
    for (int i = 0; i < n; ++i) {
      std::vector<float> u(d);
      for (float& v : u) v = normal(gen);
      updates["client" + std::to_string(i)] = u;
    }
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [n, u] : updates) out.push_back(n);
    return out;
  }
};

// Runs one round; clients in `drop_before_stage[name] = s` stop answering at stage s (0..3).
absl::StatusOr<RoundSummary> RunRound(RoundMachine& m, Fleet& fleet, uint64_t seed,
                                      std::map<std::string, int> drop = {}, std::set<std::string>* participants = nullptr) {
  auto invitations = m.Open(fleet.names(), seed);
  if (!invitations.ok()) return invitations.status();
  fleet.sessions.clear();
  for (auto& [name, inv] : *invitations) {
    auto ring = dp::RingFromProto(inv.ring());
    auto dpc = dp::DpFromProto(inv.dp());
    if (!ring.ok() || !dpc.ok()) return absl::InvalidArgumentError("bad invitation");
    auto enc = dp::PrivatizeForSecAgg(fleet.updates.at(name), *ring, *dpc, fleet.rng);
    if (!enc.ok()) return enc.status();
    fleet.sessions.emplace(name, *secagg::SecAggClient::Create(inv.secagg(), inv.secagg_id(), *enc));
    if (participants) participants->insert(name);
  }
  auto stopped = [&](const std::string& name, int stage) { return drop.count(name) && drop.at(name) <= stage; };
  for (auto& [name, c] : fleet.sessions) {
    if (stopped(name, 0)) continue;
    if (absl::Status s = m.Handle(name, *c.Start()); !s.ok()) return s;
  }
  for (int stage = 1; stage <= 4; ++stage) {
    auto out = m.FinishStage();
    if (!out.ok()) return out.status();
    if (out->committed) return *out->committed;
    for (auto& [name, msg] : out->outgoing) {
      if (stopped(name, stage)) continue;
      auto reply = fleet.sessions.at(name).Handle(msg);
      if (!reply.ok()) return reply.status();
      if (absl::Status s = m.Handle(name, *reply); !s.ok()) return s;
    }
  }
  return absl::InternalError("round did not finish");
}

TEST(RoundMachineTest, FedAvgRoundsCommitTheMeanOfClippedUpdates) {
  const std::string dir = FreshDir("fedavg");
  auto store = StateStore::Open(dir);
  RoundSettings settings;
  settings.clients_per_round = 6;
  settings.min_clients = 4;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(6, 68, 1);
  Eigen::VectorXf expected = Eigen::VectorXf::Zero(68);
  for (int round = 1; round <= 3; ++round) {
    std::set<std::string> in;
    auto summary = RunRound(**m, fleet, round, {}, &in);
    ASSERT_TRUE(summary.ok()) << summary.status();
    EXPECT_EQ(summary->round, round);
    EXPECT_EQ(summary->survivors, 6);
    Eigen::VectorXf mean = Eigen::VectorXf::Zero(68);
    for (const std::string& name : in) mean += Eigen::Map<const Eigen::VectorXf>(fleet.updates[name].data(), 68);
    expected += mean / 6;
    // Quantization error: each of 6 encodings is off by < 1 / scale per
    // coordinate (rotation spreads it by at most sqrt(d)).
    EXPECT_LT(((*m)->global() - expected).cwiseAbs().maxCoeff(), 1e-5) << "round " << round;
  }
  // A new machine on the same store resumes at round 3 with the same global.
  auto again = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ((*again)->last_committed_round(), 3);
  EXPECT_EQ((*again)->global(), (*m)->global());
  EXPECT_TRUE((*store)->CheckIntegrity().ok());
}

TEST(RoundMachineTest, DropoutsAreToleratedAndTooManyAbortCleanly) {
  auto store = StateStore::Open(FreshDir("dropouts"));
  RoundSettings settings;
  settings.clients_per_round = 6;
  settings.min_clients = 3;
  settings.threshold = 3;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  Fleet fleet(6, 68, 2);
  // One client drops before sharing keys, one after its masked input.
  auto ok = RunRound(**m, fleet, 1, {{"client1", 1}, {"client4", 3}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->survivors, 5);
  // Four drop before their inputs: 2 < t survivors, the round aborts.
  auto bad = RunRound(**m, fleet, 2, {{"client0", 2}, {"client1", 2}, {"client2", 2}, {"client3", 2}});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ((*m)->stage(), RoundStage::kIdle);
  auto rounds = (*store)->Rounds();
  EXPECT_EQ((*rounds)[0].state, "aborted");
  EXPECT_EQ((*m)->last_committed_round(), 1);
  // The next round proceeds.
  auto next = RunRound(**m, fleet, 3);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->round, 3);
}

TEST(RoundMachineTest, ImpersonationAndStrangersAreRefused) {
  auto store = StateStore::Open(FreshDir("impersonation"));
  RoundSettings settings;
  settings.clients_per_round = 4;
  settings.min_clients = 3;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  Fleet fleet(4, 68, 3);
  auto inv = (*m)->Open(fleet.names(), 1);
  ASSERT_TRUE(inv.ok());
  auto c0 = secagg::SecAggClient::Create(inv->at("client0").secagg(), inv->at("client0").secagg_id(),
                                         std::vector<uint32_t>(inv->at("client0").secagg().vector_length(), 0));
  SecAggClientMessage advert = *c0->Start();
  EXPECT_EQ((*m)->Handle("client1", advert).code(), absl::StatusCode::kPermissionDenied) << "in another's name";
  EXPECT_EQ((*m)->Handle("mallory", advert).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE((*m)->Handle("client0", advert).ok());
  EXPECT_FALSE((*m)->Open(fleet.names(), 2).ok()) << "one round at a time";
  ASSERT_TRUE((*m)->Abort("operator").ok());
}

TEST(RoundMachineTest, PrivacyBudgetStopsRounds) {
  auto store = StateStore::Open(FreshDir("budget"));
  RoundSettings settings;
  settings.clients_per_round = 5;
  settings.min_clients = 3;
  settings.noise_multiplier = 2.0;
  settings.epsilon_budget = 3.0;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(10, 68, 4);
  int committed = 0;
  absl::Status last;
  for (int r = 1; r <= 20; ++r) {
    auto s = RunRound(**m, fleet, r);
    if (!s.ok()) {
      last = s.status();
      break;
    }
    ++committed;
    EXPECT_LE(s->epsilon, 3.0);
  }
  EXPECT_GT(committed, 0) << last;
  EXPECT_EQ(last.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(last.message().find("over the budget"), absl::string_view::npos) << last;
  EXPECT_EQ((*m)->ledger().rounds().size(), static_cast<size_t>(committed));
}

}  // namespace
}  // namespace fedpers
