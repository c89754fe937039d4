#include "coordinator/round_machine.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <functional>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "secure_agg/dp_accountant.h"
#include "secure_agg/ring_encoding.h"
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

// Six clients per round, four needed to commit, in a ring of `ring_bits`.
RoundSettings SixClients(uint32_t ring_bits) {
  RoundSettings settings;
  settings.clients_per_round = 6;
  settings.min_clients = 4;
  settings.ring_bits = ring_bits;
  return settings;
}

TEST(RoundMachineTest, FedAvgRoundsCommitTheMeanOfClippedUpdates) {
  const std::string dir = FreshDir("fedavg");
  auto store = StateStore::Open(dir);
  // The finest ring: the check below allows 1e-5 per coordinate.
  const RoundSettings settings = SixClients(32);
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

// A damaged part of the newest commit stops the restart with an error that
// names the round, the state directory and the part.
TEST(RoundMachineTest, DamagedCommittedStateNamesRoundAndPart) {
  const std::string dir = FreshDir("damaged");
  auto store = StateStore::Open(dir);
  const RoundSettings settings = SixClients(32);
  {
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    Fleet fleet(6, 68, 1);
    ASSERT_TRUE(RunRound(**m, fleet, 1).ok());
  }
  struct Damage {
    const char* sql;
    const char* part;
  };
  for (const Damage& d :
       {Damage{"UPDATE global_versions SET strategy_state = x'0102'", "server optimizer state"},
        Damage{"UPDATE global_versions SET ledger_json = '[]'", "privacy ledger"}}) {
    SCOPED_TRACE(d.part);
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/state.sqlite3").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, d.sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
    auto again = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_FALSE(again.ok());
    const std::string message(again.status().message());
    EXPECT_NE(message.find("state of committed round 1 in " + dir + ", " + d.part + ": "), std::string::npos)
        << message;
  }
}

// ring_bits 0: the fewest bits whose finest ring keeps the mean's rounding
// within S / 256, its cost in the ledger within 1/256 of z (and, with noise,
// at least 4 ring steps of it per client); one bit fewer could not hold the
// scale that needs. With n_min = 1200 the ledger's condition binds: the
// rounding condition alone allows scale 1024, whose accounted multiplier is
// 1.1% below z (about m / (8 scale^2) + t / scale).
TEST(RoundMachineTest, RingSizedPerRoundUsesTheFewestBitsThatKeepTheRoundingBound) {
  struct Case {
    int64_t n, min_clients;
    size_t m;
    double clip, z;
  };
  for (const Case& c : {Case{6, 4, 128, 1.0, 0}, Case{10, 7, 73728, 1.0, 0.5}, Case{20, 14, 73728, 5.0, 0},
                        Case{1000, 600, 73728, 1.0, 0.8}, Case{2000, 1200, 73728, 1.0, 0.8},
                        Case{10, 7, 73728, 2.0, 1e-4}}) {
    dp::DistributedDpConfig dp;
    dp.noise_multiplier = c.z;
    dp.min_clients = c.min_clients;
    absl::StatusOr<secagg::RingConfig> ring = ChooseRing(0, c.clip, c.n, c.m, dp);
    ASSERT_TRUE(ring.ok()) << ring.status();
    SCOPED_TRACE(absl::StrCat("n ", c.n, " m ", c.m, " z ", c.z, ": ", ring->bits, " bits, scale ", ring->scale));
    EXPECT_TRUE(dp::ValidateRingForNoise(*ring, dp).ok());
    const double rounding = std::sqrt(static_cast<double>(c.m) / (4.0 * c.min_clients)) / ring->scale;
    EXPECT_LE(rounding, c.clip / 256);
    if (c.z > 0) {
      EXPECT_GE(dp.ClientSigma(*ring), 4.0);
    }
    EXPECT_GE(dp::AccountedNoiseMultiplier(1.0, *ring, c.m), 1.0 - 1.0 / 256);
    if (ring->bits > 8) {
      // The scale one bit fewer would need for the same three conditions.
      secagg::RingConfig fewer = *ring;
      fewer.bits = ring->bits - 1;
      fewer.scale = 1;
      while (std::sqrt(static_cast<double>(c.m) / (4.0 * c.min_clients)) / fewer.scale > c.clip / 256 ||
             (c.z > 0 && dp.ClientSigma(fewer) < 4) ||
             dp::AccountedNoiseMultiplier(1.0, fewer, c.m) < 1.0 - 1.0 / 256) {
        fewer.scale *= 2;
      }
      EXPECT_FALSE(dp::ValidateRingForNoise(fewer, dp).ok());
    }
  }
  {
    dp::DistributedDpConfig many;
    many.noise_multiplier = 0.8;
    many.min_clients = 1200;
    absl::StatusOr<secagg::RingConfig> ring = ChooseRing(0, 1.0, 2000, 73728, many);
    ASSERT_TRUE(ring.ok()) << ring.status();
    secagg::RingConfig half = *ring;
    half.scale /= 2;
    EXPECT_LE(std::sqrt(73728.0 / (4.0 * 1200)) / half.scale, 1.0 / 256) << "rounding alone would allow half";
    EXPECT_LT(dp::AccountedNoiseMultiplier(1.0, half, 73728), 1.0 - 1.0 / 256);
  }
  {
    // 2^22 values from 7 of 10 clients at z = 3: the noise cap (1e5 steps per
    // client) stops the scale before any width meets the rounding condition,
    // so the fallback is the fewest bits that reach the 32-bit ring's scale.
    dp::DistributedDpConfig capped;
    capped.noise_multiplier = 3;
    capped.min_clients = 7;
    absl::StatusOr<secagg::RingConfig> ring = ChooseRing(0, 1.0, 10, size_t{1} << 22, capped);
    absl::StatusOr<secagg::RingConfig> widest = ChooseRing(32, 1.0, 10, size_t{1} << 22, capped);
    ASSERT_TRUE(ring.ok() && widest.ok());
    EXPECT_LT(ring->bits, 32);
    EXPECT_EQ(ring->scale, widest->scale);
    absl::StatusOr<secagg::RingConfig> fewer = ChooseRing(ring->bits - 1, 1.0, 10, size_t{1} << 22, capped);
    EXPECT_TRUE(!fewer.ok() || fewer->scale < widest->scale);
  }
  // Fewer bits than 32 where they suffice: 10 clients of `tiny`'s adapter.
  dp::DistributedDpConfig dp;
  dp.noise_multiplier = 0.5;
  dp.min_clients = 7;
  EXPECT_LT(ChooseRing(0, 1.0, 10, 73728, dp)->bits, 24);
  // Explicit bits are kept, and a ring too small for the sum is an error.
  EXPECT_EQ(ChooseRing(32, 1.0, 10, 73728, dp)->bits, 32);
  EXPECT_FALSE(ChooseRing(8, 1.0, 1000, 73728, dp).ok());
}

TEST(RoundMachineTest, RingSizedPerRoundCommitsTheMeanWithinTheRoundingBound) {
  const std::string dir = FreshDir("autoring");
  auto store = StateStore::Open(dir);
  const RoundSettings settings = SixClients(0);
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(6, 68, 1);
  std::set<std::string> in;
  auto summary = RunRound(**m, fleet, 1, {}, &in);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_EQ(summary->survivors, 6);
  Eigen::VectorXf mean = Eigen::VectorXf::Zero(68);
  for (const std::string& name : in) mean += Eigen::Map<const Eigen::VectorXf>(fleet.updates[name].data(), 68);
  mean /= 6;
  // Each client's rotated coordinates round by less than one step, so the
  // mean's error is below sqrt(m) / scale in L2 (hard bound). Its expected
  // square is at most m / (4 n scale^2) with n = 6 summands, 4/6 of what the
  // rule allows for min_clients 4, so its norm stays within S / 256: a sum of
  // m = 128 independent bounded terms does not reach 1.5x its mean. The
  // round's own config names the ring it chose.
  auto rounds = (*store)->Rounds();
  ASSERT_TRUE(rounds.ok()) << rounds.status();
  ASSERT_EQ(rounds->size(), 1u);
  const nlohmann::json j = nlohmann::json::parse(rounds->front().config_json);
  EXPECT_LT(j["ring_bits"].get<int>(), 32);
  const double bound = std::sqrt(j["vector_length"].get<double>()) / j["scale"].get<double>();
  const double error = ((*m)->global() - mean).norm();
  EXPECT_LE(error, bound);
  EXPECT_LE(error, settings.clip_norm / 256);
  EXPECT_GT(mean.norm(), 10 * settings.clip_norm / 256);  // the bound is not vacuous
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

TEST(RoundMachineTest, ImpersonationStrangersAndPlainInputsAreRefused) {
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
  // A plain input has no place in a SecAgg+ round.
  EXPECT_EQ(inv->at("client0").aggregation(), fedpers::v1::AGGREGATION_SECAGG_PLUS);
  SecAggClientMessage plain;
  plain.mutable_plain_input()->set_client_id(inv->at("client0").secagg_id());
  plain.mutable_plain_input()->set_packed(std::string(16, '\0'));
  const absl::Status s = (*m)->Handle("client0", plain);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("plain input to a SecAgg+ round"), absl::string_view::npos) << s;
  ASSERT_TRUE((*m)->Abort("operator").ok());
}

// Five clients per round, three needed, noise multiplier 5: a round costs
// little, so budgets of a few epsilon last several rounds.
RoundSettings FiveClientsWithNoise() {
  RoundSettings settings;
  settings.clients_per_round = 5;
  settings.min_clients = 3;
  settings.noise_multiplier = 5.0;
  return settings;
}

// Runs rounds 1, 2, ... until one is refused or fails (at most
// `max_rounds`), calling `each` on every committed round's summary. Returns
// how many committed and the status that ended the run.
struct RunOutcome {
  int committed = 0;
  absl::Status last;
};
RunOutcome RunUntilRefused(RoundMachine& m, Fleet& fleet, int max_rounds,
                           const std::function<void(const RoundSummary&)>& each) {
  RunOutcome outcome;
  for (int r = 1; r <= max_rounds; ++r) {
    absl::StatusOr<RoundSummary> s = RunRound(m, fleet, r);
    if (!s.ok()) {
      outcome.last = s.status();
      break;
    }
    ++outcome.committed;
    each(*s);
  }
  return outcome;
}

// ProjectedEpsilon is what a federation of always-eligible users reports
// once its rounds committed, exactly; NoiseMultiplierForEpsilon finds the
// smallest multiplier (to 0.1%) that keeps the projection within a target.
TEST(RoundMachineTest, ProjectedEpsilonIsTheLedgersAndSetsTheNoiseForATarget) {
  auto store = StateStore::Open(FreshDir("projected"));
  const RoundSettings settings = FiveClientsWithNoise();
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(10, 68, 4);
  const size_t size = static_cast<size_t>(Layout().total_size());
  std::vector<double> reported;
  const auto [committed, last] =
      RunUntilRefused(**m, fleet, 4, [&](const RoundSummary& s) { reported.push_back(s.epsilon); });
  ASSERT_EQ(committed, 4) << last;
  for (int r = 1; r <= 4; ++r) {
    absl::StatusOr<double> projected = ProjectedEpsilon(settings, size, 10, r);
    ASSERT_TRUE(projected.ok()) << projected.status();
    EXPECT_EQ(*projected, reported[static_cast<size_t>(r - 1)]) << "round " << r;
  }
  EXPECT_EQ(*ProjectedEpsilon(settings, size, 10, 0), 0);

  const double target = reported[3];  // four rounds at z = 5
  absl::StatusOr<double> z = NoiseMultiplierForEpsilon(settings, size, 10, 4, target);
  ASSERT_TRUE(z.ok()) << z.status();
  EXPECT_NEAR(*z, 5.0, 5e-3) << "the multiplier that spent it";
  RoundSettings at = settings;
  at.noise_multiplier = *z;
  EXPECT_LE(*ProjectedEpsilon(at, size, 10, 4), target);
  at.noise_multiplier = *z * (1 - 1e-3);
  EXPECT_GT(*ProjectedEpsilon(at, size, 10, 4), target) << "not the smallest to 0.1%";
  // Twice the rounds in the same epsilon need more noise; fewer users
  // (a larger share sampled) too.
  EXPECT_GT(*NoiseMultiplierForEpsilon(settings, size, 10, 8, target), *z);
  EXPECT_GT(*NoiseMultiplierForEpsilon(settings, size, 5, 4, target), *z);

  // A fixed narrow ring caps the noise: a target that only z near the cap
  // meets is found there, even where doubling z would jump past the cap.
  RoundSettings narrow = settings;
  narrow.ring_bits = 8;
  auto plans = [&](double z) {
    RoundSettings at_z = narrow;
    at_z.noise_multiplier = z;
    return ProjectedEpsilon(at_z, size, 10, 4).ok();
  };
  double cap = 0;  // the largest z that plans, on a grid of 1/64
  while (plans(cap + 1.0 / 64)) cap += 1.0 / 64;
  ASSERT_GT(cap, 0.125);
  double doubled = 0.125;
  while (doubled < cap) doubled *= 2;
  narrow.noise_multiplier = doubled;
  ASSERT_FALSE(ProjectedEpsilon(narrow, size, 10, 4).ok()) << "doubling alone would fail at z " << doubled;
  narrow.noise_multiplier = cap;
  const double near_cap = *ProjectedEpsilon(narrow, size, 10, 4);
  absl::StatusOr<double> capped = NoiseMultiplierForEpsilon(narrow, size, 10, 4, near_cap);
  ASSERT_TRUE(capped.ok()) << capped.status() << " (cap " << cap << ")";
  EXPECT_LE(*capped, cap * (1 + 1e-3));
  narrow.noise_multiplier = *capped;
  EXPECT_LE(*ProjectedEpsilon(narrow, size, 10, 4), near_cap);
  absl::Status beyond = NoiseMultiplierForEpsilon(narrow, size, 10, 4, 0.5 * near_cap).status();
  EXPECT_NE(beyond.message().find("no noise multiplier the ring can carry"), absl::string_view::npos)
      << beyond;
  EXPECT_FALSE(NoiseMultiplierForEpsilon(settings, size, 10, 0, target).ok()) << "no rounds";

  absl::Status unreachable = NoiseMultiplierForEpsilon(settings, size, 10, 4, 1e-9).status();
  EXPECT_NE(unreachable.message().find("no noise multiplier up to 10000"), absl::string_view::npos)
      << unreachable;
  EXPECT_FALSE(NoiseMultiplierForEpsilon(settings, size, 10, 4, 0).ok());
  EXPECT_FALSE(ProjectedEpsilon(settings, size, 2, 4).ok()) << "fewer eligible users than min_clients";
  EXPECT_FALSE(ProjectedEpsilon(settings, size, 10, -1).ok());
}

TEST(RoundMachineTest, PrivacyBudgetStopsRounds) {
  auto store = StateStore::Open(FreshDir("budget"));
  RoundSettings settings = FiveClientsWithNoise();
  settings.epsilon_budget = 3.0;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(10, 68, 4);
  const auto [committed, last] =
      RunUntilRefused(**m, fleet, 20, [](const RoundSummary& s) { EXPECT_LE(s.epsilon, 3.0); });
  EXPECT_GT(committed, 0) << last;
  EXPECT_EQ(last.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(last.message().find("over the budget"), absl::string_view::npos) << last;
  EXPECT_EQ((*m)->ledger().rounds().size(), static_cast<size_t>(committed));
}

// A budget on the epsilon against the coordinator stops rounds on its own
// (the ledger's budget is infinite here), survives a restart as a setting,
// and is refused where nothing hides a user from the coordinator.
TEST(RoundMachineTest, BudgetAgainstTheCoordinatorStopsRounds) {
  auto store = StateStore::Open(FreshDir("coordinator_budget"));
  RoundSettings settings = FiveClientsWithNoise();
  settings.epsilon_budget_against_coordinator = 3.0;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(10, 68, 4);
  const auto [committed, last] = RunUntilRefused(**m, fleet, 200, [](const RoundSummary& s) {
    ASSERT_TRUE(s.epsilon_against_coordinator.has_value());
    EXPECT_LE(*s.epsilon_against_coordinator, 3.0);
  });
  EXPECT_GT(committed, 0) << last;
  EXPECT_EQ(last.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(last.message().find("epsilon against the coordinator"), absl::string_view::npos) << last;
  auto again = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->ledger().budget_against_coordinator(), 3.0);
  absl::Status after_restart = RunRound(**again, fleet, 300).status();
  EXPECT_NE(after_restart.message().find("epsilon against the coordinator"), absl::string_view::npos)
      << after_restart;
  RoundSettings raised = settings;
  raised.epsilon_budget_against_coordinator = 6.0;
  auto more = RoundMachine::Create(store->get(), Layout(), raised);
  ASSERT_TRUE(more.ok()) << more.status();
  EXPECT_TRUE(RunRound(**more, fleet, 301).ok()) << "a raised budget lets rounds go on";
  RoundSettings hopeless = settings;
  hopeless.epsilon_budget_against_coordinator = 0.5;
  EXPECT_NE(CheckRoundsCanOpen(hopeless, 68).message().find("below what one round of 3 clients costs"),
            absl::string_view::npos)
      << CheckRoundsCanOpen(hopeless, 68);

  RoundSettings central = settings;
  central.central_noise = true;
  EXPECT_NE(central.Validate().message().find("needs noise the clients add"), absl::string_view::npos);
  RoundSettings noiseless = settings;
  noiseless.noise_multiplier = 0;
  EXPECT_FALSE(noiseless.Validate().ok());
}

// The snapshot keeps the delta and budget of its time; a restart applies the
// configured ones: a raised budget lets rounds go on, and epsilon is
// recomputed at the configured delta from the same RDP sums.
TEST(RoundMachineTest, ARestartAppliesTheConfiguredBudgetAndDelta) {
  auto store = StateStore::Open(FreshDir("budget_restart"));
  RoundSettings settings = FiveClientsWithNoise();
  settings.epsilon_budget = 3.0;
  Fleet fleet(10, 68, 4);
  double epsilon_at_stop = 0;
  {
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    RunUntilRefused(**m, fleet, 20, [](const RoundSummary&) {});
    epsilon_at_stop = (*m)->ledger().epsilon();
    ASSERT_GT(epsilon_at_stop, 0);
  }
  {
    auto same = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(same.ok()) << same.status();
    EXPECT_EQ((*same)->ledger().epsilon(), epsilon_at_stop) << "same delta: the same epsilon, exactly";
    absl::Status refused = RunRound(**same, fleet, 100).status();
    EXPECT_NE(refused.message().find("over the budget 3.0000"), absl::string_view::npos) << refused;
  }
  RoundSettings raised = settings;
  raised.epsilon_budget = 6.0;
  {
    auto m = RoundMachine::Create(store->get(), Layout(), raised);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ((*m)->ledger().budget(), 6.0);
    auto s = RunRound(**m, fleet, 101);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_GT(s->epsilon, epsilon_at_stop);
    EXPECT_LE(s->epsilon, 6.0);
    epsilon_at_stop = (*m)->ledger().epsilon();
  }
  RoundSettings looser = raised;
  looser.delta = 1e-3;
  auto m = RoundMachine::Create(store->get(), Layout(), looser);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)->ledger().delta(), 1e-3);
  EXPECT_GT((*m)->ledger().epsilon(), 0);
  EXPECT_LT((*m)->ledger().epsilon(), epsilon_at_stop) << "a larger delta buys a smaller epsilon";
}

// The ledger charges a round for the rounded update's worst-case norm: the
// multiplier it records is AccountedNoiseMultiplier of the round's ring,
// and a coarse ring costs more epsilon than a fine one at the same z.
TEST(RoundMachineTest, LedgerAccountsTheRoundingOfTheRing) {
  auto noised = [](uint32_t bits) {
    RoundSettings settings;
    settings.clients_per_round = 5;
    settings.min_clients = 3;
    settings.noise_multiplier = 1.0;
    settings.ring_bits = bits;
    return settings;
  };
  std::map<uint32_t, double> epsilon;
  for (uint32_t bits : {32u, 16u}) {
    auto store = StateStore::Open(FreshDir(absl::StrCat("accounted", bits)));
    const RoundSettings settings = noised(bits);
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    Fleet fleet(10, 68, 4);
    auto s = RunRound(**m, fleet, 1);
    ASSERT_TRUE(s.ok()) << s.status();
    auto rounds = (*store)->Rounds();
    ASSERT_TRUE(rounds.ok());
    const nlohmann::json config = nlohmann::json::parse(rounds->front().config_json);
    secagg::RingConfig ring;
    ring.bits = config["ring_bits"].get<int>();
    ring.clip_norm = settings.clip_norm;
    ring.scale = config["scale"].get<double>();
    ASSERT_EQ(config["vector_length"].get<size_t>(), 128u);  // 68 values, rotated in one block of 128
    const double accounted = dp::AccountedNoiseMultiplier(1.0, ring, 128);
    EXPECT_EQ(config["accounted_noise_multiplier"].get<double>(), accounted);
    ASSERT_EQ((*m)->ledger().rounds().size(), 1u);
    EXPECT_EQ((*m)->ledger().rounds()[0].noise_multiplier, accounted);
    EXPECT_LT(accounted, 1.0);
    epsilon[bits] = s->epsilon;
  }
  EXPECT_GT(epsilon[16], epsilon[32]);
  {
    // A 10-bit ring leaves each client about a third of a ring step of
    // noise at z = 0.01: the ledger charges the discrete Gaussians' own loss.
    auto store = StateStore::Open(FreshDir("accounted_discrete"));
    RoundSettings settings = noised(10);
    settings.noise_multiplier = 0.01;
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    Fleet fleet(10, 68, 4);
    auto s = RunRound(**m, fleet, 1);
    ASSERT_TRUE(s.ok()) << s.status();
    const nlohmann::json config = nlohmann::json::parse((*store)->Rounds()->front().config_json);
    secagg::RingConfig ring;
    ring.bits = config["ring_bits"].get<int>();
    ring.clip_norm = settings.clip_norm;
    ring.scale = config["scale"].get<double>();
    ring.max_summands = settings.clients_per_round;
    dp::DistributedDpConfig dp;
    dp.noise_multiplier = settings.noise_multiplier;
    dp.min_clients = config["noise_shares"].get<int64_t>();
    const double sigma = dp.ClientSigma(ring);
    ASSERT_LT(sigma, 0.5);
    const double tau = dp::DistributedDiscreteGaussianTau(dp.min_clients, sigma);
    ASSERT_GT(tau, 0);
    EXPECT_EQ(config["discrete_gaussian_tau"].get<double>(), tau);
    const double rounding_only = dp::AccountedNoiseMultiplier(0.01, ring, 128);
    // Below half a ring step only one share's bound holds.
    const double accounted = rounding_only / std::sqrt(static_cast<double>(dp.min_clients));
    EXPECT_DOUBLE_EQ(dp::DistributedDiscreteAccountedMultiplier(rounding_only, dp.min_clients, sigma, 128), accounted);
    EXPECT_DOUBLE_EQ(config["accounted_noise_multiplier"].get<double>(), accounted);
    EXPECT_DOUBLE_EQ((*m)->ledger().rounds()[0].noise_multiplier, accounted);
    // Said at config time, with the multipliers; nothing to say for a ring
    // sized per round, central noise or no noise.
    const std::string warning = DiscreteNoiseWarning(settings, 68);
    EXPECT_NE(warning.find("a 10-bit ring leaves each of 5 clients"), std::string::npos) << warning;
    EXPECT_NE(warning.find(absl::StrFormat("charge noise multiplier %.3g instead of %.3g", accounted, rounding_only)),
              std::string::npos)
        << warning;
    RoundSettings sized = settings;
    sized.ring_bits = 0;
    EXPECT_EQ(DiscreteNoiseWarning(sized, 68), "");
    RoundSettings central = settings;
    central.central_noise = true;
    EXPECT_EQ(DiscreteNoiseWarning(central, 68), "");
    RoundSettings quiet = settings;
    quiet.noise_multiplier = 0;
    EXPECT_EQ(DiscreteNoiseWarning(quiet, 68), "");
  }
  // A budget between what z and the accounted multiplier would cost refuses
  // the round before anything is recorded.
  Fleet fleet(10, 68, 4);
  auto ledger = PrivacyLedger::Create(1e-5, std::numeric_limits<double>::infinity());
  ASSERT_TRUE(ledger.ok());
  const std::vector<std::string> names = fleet.names();
  auto at_z = ledger->ProjectedEpsilon(0.5, 1.0, dp::SampledNoise::kGaussianDominated, names);
  ASSERT_TRUE(at_z.ok());
  ASSERT_LT(*at_z, epsilon[16]);
  auto store = StateStore::Open(FreshDir("accounted_budget"));
  RoundSettings settings = noised(16);
  settings.epsilon_budget = 0.5 * (*at_z + epsilon[16]);
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  auto refused = RunRound(**m, fleet, 1);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_TRUE((*m)->ledger().rounds().empty());
}

// A round without secure aggregation: each sampled client privatizes its
// update and sends it packed as its one PlainInput; `skip` send nothing.
absl::StatusOr<RoundSummary> RunPlainRound(RoundMachine& m, Fleet& fleet, uint64_t seed,
                                           std::set<std::string> skip = {}) {
  auto invitations = m.Open(fleet.names(), seed);
  if (!invitations.ok()) return invitations.status();
  if (m.stage() != RoundStage::kInputs) return absl::InternalError("a plain round starts at the inputs stage");
  for (auto& [name, inv] : *invitations) {
    if (inv.aggregation() != fedpers::v1::AGGREGATION_PLAIN) return absl::InternalError("invitation is not plain");
    auto ring = dp::RingFromProto(inv.ring());
    auto dpc = dp::DpFromProto(inv.dp());
    if (!ring.ok() || !dpc.ok()) return absl::InvalidArgumentError("bad invitation");
    auto enc = dp::PrivatizeForSecAgg(fleet.updates.at(name), *ring, *dpc, fleet.rng);
    if (!enc.ok()) return enc.status();
    if (skip.count(name)) continue;
    SecAggClientMessage msg;
    msg.mutable_plain_input()->set_client_id(inv.secagg_id());
    const std::vector<uint8_t> packed = secagg::PackBits(*enc, ring->bits);
    msg.mutable_plain_input()->set_packed(std::string(packed.begin(), packed.end()));
    if (absl::Status s = m.Handle(name, msg); !s.ok()) return s;
  }
  if (!m.expected().empty() && skip.empty()) return absl::InternalError("every client answered, yet some are expected");
  auto out = m.FinishStage();
  if (!out.ok()) return out.status();
  if (!out->committed || !out->outgoing.empty()) return absl::InternalError("a plain round commits in one stage");
  return *out->committed;
}

// The clients' discrete shares are charged with the sampling bound that
// holds for noise a Gaussian dominates (Theorem 9 alone); the coordinator's
// continuous Gaussian with the tighter one. At z = 10 the two differ, and
// the rings are wide enough that both rounds charge the same multiplier.
TEST(RoundMachineTest, LedgerChargesEachNoiseWithTheBoundItAllows) {
  std::map<bool, double> epsilon;
  for (bool central : {false, true}) {
    SCOPED_TRACE(central ? "central noise" : "distributed noise");
    auto store = StateStore::Open(FreshDir(absl::StrCat("noise_bound", central)));
    RoundSettings settings;
    settings.clients_per_round = 5;
    settings.min_clients = 3;
    settings.noise_multiplier = 10.0;
    settings.central_noise = central;
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    Fleet fleet(10, 68, 4);
    auto s = RunRound(**m, fleet, 1);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_EQ((*m)->ledger().rounds().size(), 1u);
    const LedgerRound& round = (*m)->ledger().rounds()[0];
    const dp::SampledNoise noise =
        central ? dp::SampledNoise::kGaussian : dp::SampledNoise::kGaussianDominated;
    EXPECT_EQ(round.noise, noise);
    // Against the coordinator: the whole noise of the SecAgg+ sum, or
    // nothing when it adds the noise itself.
    EXPECT_EQ(round.coordinator_noise_multiplier, central ? 0.0 : round.noise_multiplier);
    ASSERT_TRUE(s->epsilon_against_coordinator.has_value());
    EXPECT_EQ(std::isinf(*s->epsilon_against_coordinator), central);
    const nlohmann::json metrics = nlohmann::json::parse((*store)->Rounds()->front().metrics_json);
    ASSERT_EQ(metrics["contributors"].size(), 5u);
    for (const auto& user : metrics["contributors"]) {
      EXPECT_EQ((*m)->ledger().UserEpsilonAgainstCoordinator(user.get<std::string>()),
                s->epsilon_against_coordinator);
    }
    EXPECT_EQ(metrics["epsilon_against_coordinator"], EpsilonToJson(s->epsilon_against_coordinator));
    const std::vector<double> orders = dp::DefaultOrders();
    auto rdp = dp::ComputeRdpSampledWithoutReplacement(round.sampling_rate, round.noise_multiplier / 2, noise,
                                                       1, orders);
    ASSERT_TRUE(rdp.ok());
    EXPECT_EQ(s->epsilon, dp::EpsilonFromRdp(orders, *rdp, settings.delta)->epsilon);
    EXPECT_GT(round.noise_multiplier, 0.99 * settings.noise_multiplier);
    // The snapshot keeps the noise.
    auto restored = PrivacyLedger::FromJson((*m)->ledger().ToJson());
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(restored->rounds()[0].noise, noise);
    epsilon[central] = s->epsilon;
  }
  EXPECT_GT(epsilon[false], 1.02 * epsilon[true]);  // 1.057 here
}

TEST(RoundMachineTest, PlainAggregationCommitsExactlyWhatSecAggCommits) {
  // Same clients, seeds and encodings (noise included): the SecAgg+ sum and
  // the plain sum are the same ring vector, so the adapters are equal bit
  // for bit, round after round.
  // min_clients 3 is below SecAgg's t = 4 for 6 clients: the plain round
  // splits the noise among max(t, min_clients) as well.
  RoundSettings settings;
  settings.clients_per_round = 6;
  settings.min_clients = 3;
  settings.noise_multiplier = 0.5;
  settings.clip_norm = 0.5;
  RoundSettings plain_settings = settings;
  plain_settings.secure_aggregation = false;
  auto secure_store = StateStore::Open(FreshDir("secure_twin"));
  auto plain_store = StateStore::Open(FreshDir("plain_twin"));
  auto secure = RoundMachine::Create(secure_store->get(), Layout(), settings);
  auto plain = RoundMachine::Create(plain_store->get(), Layout(), plain_settings);
  ASSERT_TRUE(secure.ok() && plain.ok());
  Fleet secure_fleet(8, 68, 7), plain_fleet(8, 68, 7);
  for (int round = 1; round <= 3; ++round) {
    auto a = RunRound(**secure, secure_fleet, round);
    auto b = RunPlainRound(**plain, plain_fleet, round);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ(b->survivors, 6);
    EXPECT_EQ(a->epsilon, b->epsilon);
    // The coordinator sees a plain round's updates, each with one client's
    // share of the noise: one of the 4 shares hides a contributor from it.
    const LedgerRound& secure_round = (*secure)->ledger().rounds().back();
    const LedgerRound& plain_round = (*plain)->ledger().rounds().back();
    EXPECT_EQ(secure_round.coordinator_noise_multiplier, secure_round.noise_multiplier);
    EXPECT_DOUBLE_EQ(plain_round.coordinator_noise_multiplier, plain_round.noise_multiplier / 2);
    EXPECT_GT(*b->epsilon_against_coordinator, *a->epsilon_against_coordinator);
    ASSERT_GT((*plain)->global().norm(), 0);
    EXPECT_EQ((*secure)->global(), (*plain)->global()) << "round " << round;
  }
  auto rounds = (*plain_store)->Rounds(1);
  ASSERT_TRUE(rounds.ok() && !rounds->empty());
  EXPECT_NE((*rounds)[0].metrics_json.find("\"aggregation\":\"plain\""), std::string::npos) << (*rounds)[0].metrics_json;
}

TEST(RoundMachineTest, PlainRoundsRefuseWrongMessagesAndAbortBelowMinClients) {
  auto store = StateStore::Open(FreshDir("plain_hostile"));
  RoundSettings settings;
  settings.clients_per_round = 5;
  settings.min_clients = 3;
  settings.secure_aggregation = false;
  auto m = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(5, 68, 8);
  auto inv = (*m)->Open(fleet.names(), 1);
  ASSERT_TRUE(inv.ok()) << inv.status();
  const fedpers::v1::RoundInvitation& i0 = inv->at("client0");
  const size_t m_len = i0.secagg().vector_length();
  const int bits = static_cast<int>(i0.ring().bits());
  SecAggClientMessage good;
  good.mutable_plain_input()->set_client_id(i0.secagg_id());
  const std::vector<uint8_t> packed = secagg::PackBits(std::vector<uint32_t>(m_len, 1), bits);
  good.mutable_plain_input()->set_packed(std::string(packed.begin(), packed.end()));
  SecAggClientMessage short_input = good;
  short_input.mutable_plain_input()->mutable_packed()->pop_back();
  EXPECT_EQ((*m)->Handle("client0", short_input).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*m)->Handle("client1", good).code(), absl::StatusCode::kPermissionDenied) << "in another's name";
  EXPECT_EQ((*m)->Handle("mallory", good).code(), absl::StatusCode::kPermissionDenied);
  SecAggClientMessage advert;
  advert.mutable_advertise_keys()->mutable_keys()->set_client_id(i0.secagg_id());
  EXPECT_EQ((*m)->Handle("client0", advert).code(), absl::StatusCode::kInvalidArgument) << "SecAgg+ in a plain round";
  EXPECT_TRUE((*m)->Handle("client0", good).ok());
  EXPECT_EQ((*m)->Handle("client0", good).code(), absl::StatusCode::kAlreadyExists) << "a replayed input";
  EXPECT_EQ((*m)->expected().size(), 4u);
  // Two inputs of the four needed (t = 4 for 5 clients): the round aborts
  // and records why.
  SecAggClientMessage second = good;
  second.mutable_plain_input()->set_client_id(inv->at("client1").secagg_id());
  ASSERT_TRUE((*m)->Handle("client1", second).ok());
  auto out = (*m)->FinishStage();
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("2 inputs, fewer than the 4 the round needs"), absl::string_view::npos)
      << out.status();
  EXPECT_EQ((*m)->stage(), RoundStage::kIdle);
  EXPECT_EQ((*store)->Rounds(1)->at(0).state, "aborted");
  // The next round commits with four of five.
  auto next = RunPlainRound(**m, fleet, 2, {"client3"});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->survivors, 4);
  EXPECT_EQ(next->sampled, 5);
}

// A plain round shows the coordinator each input whenever it is sent (even
// late, when it is refused): whatever the round's end, every sampled user
// pays for one input against the coordinator (not in the ledger's epsilon
// when nothing was released), and a restart charges the same from the store.
TEST(RoundMachineTest, PlainRoundsCostEverySampledUserAgainstTheCoordinator) {
  auto store = StateStore::Open(FreshDir("plain_exposure"));
  RoundSettings settings;
  settings.clients_per_round = 5;
  settings.min_clients = 3;
  settings.secure_aggregation = false;
  settings.noise_multiplier = 1.0;
  Fleet fleet(6, 68, 8);
  double one_exposure = 0;
  std::vector<std::string> sampled;
  std::map<std::string, double> at_commit;
  {
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    auto inv = (*m)->Open(fleet.names(), 1);
    ASSERT_TRUE(inv.ok()) << inv.status();
    for (const auto& [name, i] : *inv) sampled.push_back(name);
    for (size_t k = 0; k < 2; ++k) {  // two inputs of the four needed
      const fedpers::v1::RoundInvitation& i = inv->at(sampled[k]);
      SecAggClientMessage input;
      input.mutable_plain_input()->set_client_id(i.secagg_id());
      const std::vector<uint8_t> packed = secagg::PackBits(
          std::vector<uint32_t>(i.secagg().vector_length(), 1), static_cast<int>(i.ring().bits()));
      input.mutable_plain_input()->set_packed(std::string(packed.begin(), packed.end()));
      ASSERT_TRUE((*m)->Handle(sampled[k], input).ok());
    }
    ASSERT_FALSE((*m)->FinishStage().ok());
    const PrivacyLedger& ledger = (*m)->ledger();
    one_exposure = *ledger.UserEpsilonAgainstCoordinator(sampled[0]);
    EXPECT_GT(one_exposure, 0);
    for (const std::string& name : fleet.names()) {
      const bool was_sampled = std::count(sampled.begin(), sampled.end(), name) > 0;
      EXPECT_EQ(*ledger.UserEpsilonAgainstCoordinator(name), was_sampled ? one_exposure : 0) << name;
    }
    EXPECT_EQ(ledger.epsilon(), 0) << "nothing was released";
  }
  {
    auto restarted = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    for (const std::string& name : sampled) {
      EXPECT_EQ(*(*restarted)->ledger().UserEpsilonAgainstCoordinator(name), one_exposure) << name;
    }
    // A committed round: its contributors through the ledger's round, the
    // sampled user who sent nothing as an exposure; once committed, the
    // aborted round is in the snapshot and not replayed again.
    auto committed = RunPlainRound(**restarted, fleet, 2, {"client5"});
    ASSERT_TRUE(committed.ok()) << committed.status();
    for (const std::string& name : fleet.names()) {
      at_commit[name] = *(*restarted)->ledger().UserEpsilonAgainstCoordinator(name);
    }
    for (const std::string& name : sampled) EXPECT_GE(at_commit[name], one_exposure) << name;
  }
  auto again = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(again.ok()) << again.status();
  for (const std::string& name : fleet.names()) {
    EXPECT_EQ(*(*again)->ledger().UserEpsilonAgainstCoordinator(name), at_commit[name])
        << name << ": the aborted round is in the snapshot, not replayed again";
  }
}

// Once a SecAgg+ round asks for unmasking, enough answers reveal the
// survivors' sum: a crash from there on (the round is found open at start
// and aborted) charges the survivors against the coordinator, and only them.
TEST(RoundMachineTest, ACrashDuringUnmaskingChargesTheSurvivors) {
  auto store = StateStore::Open(FreshDir("unmasking_crash"));
  RoundSettings settings = SixClients(32);
  settings.noise_multiplier = 1.0;
  Fleet fleet(6, 68, 3);
  {
    auto m = RoundMachine::Create(store->get(), Layout(), settings);
    ASSERT_TRUE(m.ok()) << m.status();
    auto invitations = (*m)->Open(fleet.names(), 1);
    ASSERT_TRUE(invitations.ok()) << invitations.status();
    for (auto& [name, inv] : *invitations) {
      auto enc = dp::PrivatizeForSecAgg(fleet.updates.at(name), *dp::RingFromProto(inv.ring()),
                                        *dp::DpFromProto(inv.dp()), fleet.rng);
      ASSERT_TRUE(enc.ok()) << enc.status();
      fleet.sessions.emplace(name, *secagg::SecAggClient::Create(inv.secagg(), inv.secagg_id(), *enc));
    }
    for (auto& [name, c] : fleet.sessions) ASSERT_TRUE((*m)->Handle(name, *c.Start()).ok());
    for (int stage = 1; stage <= 3; ++stage) {  // keys, shares, inputs; client0 sends no input
      auto out = (*m)->FinishStage();
      ASSERT_TRUE(out.ok()) << out.status();
      if (stage == 3) break;  // the unmasking requests are out: crash
      for (auto& [name, msg] : out->outgoing) {
        if (stage == 2 && name == "client0") continue;
        auto reply = fleet.sessions.at(name).Handle(msg);
        ASSERT_TRUE(reply.ok()) << reply.status();
        ASSERT_TRUE((*m)->Handle(name, *reply).ok());
      }
    }
    EXPECT_EQ((*m)->stage(), RoundStage::kUnmasking);
  }
  auto restarted = RoundMachine::Create(store->get(), Layout(), settings);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  const PrivacyLedger& ledger = (*restarted)->ledger();
  EXPECT_EQ(*ledger.UserEpsilonAgainstCoordinator("client0"), 0) << "sent no masked input";
  for (const char* name : {"client1", "client2", "client3", "client4", "client5"}) {
    EXPECT_GT(*ledger.UserEpsilonAgainstCoordinator(name), 0) << name;
  }
  EXPECT_EQ(ledger.epsilon(), 0) << "nothing was released";
}

// Without noise nothing hides a contributor from the coordinator.
TEST(RoundMachineTest, NoiselessRoundsMakeTheEpsilonAgainstTheCoordinatorInfinite) {
  auto store = StateStore::Open(FreshDir("noiseless"));
  auto m = RoundMachine::Create(store->get(), Layout(), SixClients(32));
  ASSERT_TRUE(m.ok()) << m.status();
  Fleet fleet(6, 68, 2);
  auto summary = RunRound(**m, fleet, 1);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(std::isinf(*summary->epsilon_against_coordinator));
  EXPECT_TRUE(std::isinf(*(*m)->ledger().UserEpsilonAgainstCoordinator("client3")));
  // Nor does anything hide the released sum: the ledger's epsilon too.
  EXPECT_TRUE(std::isinf(summary->epsilon));
  EXPECT_TRUE(std::isinf((*m)->ledger().epsilon()));
  EXPECT_EQ((*m)->ledger().rounds().size(), 1u);
  m->reset();
  auto restarted = RoundMachine::Create(store->get(), Layout(), SixClients(32));
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_TRUE(std::isinf((*restarted)->ledger().epsilon())) << "the snapshot keeps it";
  // A finite budget cannot be met without noise: refused before any round.
  RoundSettings budgeted = SixClients(32);
  budgeted.epsilon_budget = 10;
  EXPECT_NE(budgeted.Validate().message().find("epsilon_budget needs noise"), absl::string_view::npos)
      << budgeted.Validate();
}

// The accounting name of the builds whose ledger skipped rounds without noise.
constexpr char kOlderAccounting[] =
    "fixed-size sampling without replacement, replace-one neighbours, each round's noise bound";

// Replaces the stored ledger snapshots of the store in `dir` with `snapshot`
// under kOlderAccounting, as those builds wrote them.
void WriteOlderLedgerSnapshot(const std::string& dir, nlohmann::json snapshot) {
  snapshot["accounting"] = kOlderAccounting;
  std::string quoted = snapshot.dump();  // SQL doubles the apostrophe in "round's"
  for (size_t at = quoted.find('\''); at != std::string::npos; at = quoted.find('\'', at + 2))
    quoted.insert(at, 1, '\'');
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir + "/state.sqlite3").c_str(), &db), SQLITE_OK);
  const std::string sql = "UPDATE global_versions SET ledger_json = '" + quoted + "'";
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
}

// Builds before rounds without noise reached the ledger left them out of its
// snapshot (epsilon 0). A restart from such a snapshot charges them from the
// stored rounds: every stored user's epsilon (who was eligible is not
// stored), and the contributors' against the coordinator. Snapshots that
// recorded the round under the same older name are not charged twice.
TEST(RoundMachineTest, RoundsWithoutNoiseThatOlderSnapshotsMissAreChargedAtRestart) {
  const std::string dir = FreshDir("legacy_noiseless");
  auto store = StateStore::Open(dir);
  std::set<std::string> participants;
  {
    auto m = RoundMachine::Create(store->get(), Layout(), SixClients(32));
    ASSERT_TRUE(m.ok()) << m.status();
    Fleet fleet(6, 68, 2);
    ASSERT_TRUE(RunRound(**m, fleet, 1, {}, &participants).ok());
  }
  ASSERT_EQ(participants.size(), 6u);
  ASSERT_TRUE((*store)->RecordJoin("late-client", "fingerprint", {"bystander"}).ok());  // never sampled
  auto restart_from = [&](const nlohmann::json& snapshot) {
    WriteOlderLedgerSnapshot(dir, snapshot);
    return RoundMachine::Create(store->get(), Layout(), SixClients(32));
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();

  // As the builds that skipped the ledger wrote it: nothing recorded.
  const nlohmann::json skipped = nlohmann::json::parse(PrivacyLedger::Create(1e-5, kInf)->ToJson());
  nlohmann::json named = skipped;
  named["accounting"] = kOlderAccounting;
  ASSERT_TRUE(PrivacyLedger::FromJson(named.dump())->MayMissRoundsWithoutNoise());
  EXPECT_EQ(PrivacyLedger::FromJson(named.dump())->epsilon(), 0) << "what those builds reported";
  auto expect_charged = [&](const PrivacyLedger& ledger) {
    EXPECT_EQ(ledger.epsilon(), kInf);
    for (const std::string& user : participants) {
      EXPECT_EQ(*ledger.UserEpsilon(user), kInf) << user;
      EXPECT_EQ(*ledger.UserEpsilonAgainstCoordinator(user), kInf) << user;
    }
    EXPECT_EQ(*ledger.UserEpsilon("bystander"), kInf) << "stored: may have been eligible";
    EXPECT_EQ(*ledger.UserEpsilonAgainstCoordinator("bystander"), 0) << "not in the sum";
  };
  {
    auto restarted = restart_from(skipped);
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    expect_charged((*restarted)->ledger());
    // Written again under the current accounting, it misses nothing.
    const std::string again = (*restarted)->ledger().ToJson();
    EXPECT_FALSE(PrivacyLedger::FromJson(again)->MayMissRoundsWithoutNoise());
    EXPECT_EQ(PrivacyLedger::FromJson(again)->epsilon(), kInf);
  }
  {
    // A second restart before the next commit: the same snapshot, the same charge.
    auto second = RoundMachine::Create(store->get(), Layout(), SixClients(32));
    ASSERT_TRUE(second.ok()) << second.status();
    expect_charged((*second)->ledger());
  }

  // As the first builds that recorded such rounds wrote it (the same older
  // name): round 1 is in the snapshot with who was eligible, exactly.
  auto recorded = PrivacyLedger::Create(1e-5, kInf);
  const std::vector<std::string> sampled(participants.begin(), participants.end());
  ASSERT_TRUE(
      recorded->RecordRound(1, 1.0, 0, dp::SampledNoise::kGaussianDominated, 0, sampled, sampled).ok());
  auto exact = restart_from(nlohmann::json::parse(recorded->ToJson()));
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_EQ((*exact)->ledger().epsilon(), kInf);
  EXPECT_EQ(*(*exact)->ledger().UserEpsilon("bystander"), 0) << "not charged again as an upper bound";

  // A stored round config that does not say its noise cannot be charged.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir + "/state.sqlite3").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE rounds SET config_json = '{}'", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  absl::Status unknown = restart_from(skipped).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(unknown.message().find("cannot say whether it had noise"), absl::string_view::npos) << unknown;
}

// The same for a plain round: the coordinator saw every sampled user's
// input, also one it did not sum.
TEST(RoundMachineTest, PlainRoundsWithoutNoiseThatOlderSnapshotsMissChargeEverySampledUser) {
  const std::string dir = FreshDir("legacy_noiseless_plain");
  auto store = StateStore::Open(dir);
  RoundSettings plain = SixClients(32);
  plain.secure_aggregation = false;
  {
    auto m = RoundMachine::Create(store->get(), Layout(), plain);
    ASSERT_TRUE(m.ok()) << m.status();
    Fleet fleet(6, 68, 2);
    ASSERT_TRUE(RunPlainRound(**m, fleet, 1, {"client5"}).ok());
  }
  WriteOlderLedgerSnapshot(
      dir,
      nlohmann::json::parse(PrivacyLedger::Create(1e-5, std::numeric_limits<double>::infinity())->ToJson()));
  auto restarted = RoundMachine::Create(store->get(), Layout(), plain);
  ASSERT_TRUE(restarted.ok()) << restarted.status();
  EXPECT_TRUE(std::isinf(*(*restarted)->ledger().UserEpsilonAgainstCoordinator("client5")))
      << "sampled, not summed, but seen";
  EXPECT_TRUE(std::isinf(*(*restarted)->ledger().UserEpsilonAgainstCoordinator("client0")));
}

// SecAgg+ needs t <= k + 1. The bounds give k = 76 for large samples, and
// min_clients raises t to 80 of 100: the graph widens instead of every round
// failing to open. CheckRoundsCanOpen runs the protocol's own checks.
TEST(RoundMachineTest, AThresholdRaisedToMinClientsWidensTheGraph) {
  RoundSettings settings;
  settings.clients_per_round = 100;
  settings.min_clients = 80;
  EXPECT_TRUE(CheckRoundsCanOpen(settings, 48).ok()) << CheckRoundsCanOpen(settings, 48);
  settings.min_clients = 99;
  EXPECT_TRUE(CheckRoundsCanOpen(settings, 48).ok()) << CheckRoundsCanOpen(settings, 48);
  settings.threshold = 100;
  settings.min_clients = 80;
  absl::Status s = CheckRoundsCanOpen(settings, 48);
  EXPECT_NE(s.message().find("threshold 100 exceeds a round of 80 clients"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace fedpers
