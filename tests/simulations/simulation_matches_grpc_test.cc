// The simulation runs the deployment's round logic: for the same seeds and
// users, rounds through the in-memory transport and rounds through the real
// gRPC server with `RunClient` clients (one thread each, on loopback) commit
// bit-identical global adapters, DP noise and FedAdam included; so do rounds
// without secure aggregation, which commit what SecAgg+ rounds commit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <thread>

#include "client/grpc_client.h"
#include "common/corpus.h"
#include "common/tokenizer.h"
#include "coordinator/grpc_server.h"
#include "simulations/virtual_federation.h"
#include "tests/model/test_util.h"

namespace fedpers {
namespace {

constexpr int kUsers = 4;
constexpr int kRounds = 2;

RuntimeSettings Settings() {
  RuntimeSettings s;
  s.round.clients_per_round = kUsers;
  s.round.min_clients = 3;
  s.round.clip_norm = 0.5;
  s.round.noise_multiplier = 0.2;
  s.round.strategy.name = "fedadam";
  s.round.strategy.server_learning_rate = 0.05;
  s.round.seed = 77;
  return s;
}

LocalTrainingOptions Local() {
  LocalTrainingOptions o;
  o.global_steps = 3;
  o.residual_steps = 2;
  o.batch_size = 4;
  o.seed = 5;
  o.noise_seed = 9;  // seeded rounding and noise: both runs draw the same values
  return o;
}

// The same rounds without SecAgg+, and clients that take part in them.
RuntimeSettings PlainSettings() {
  RuntimeSettings s = Settings();
  s.round.secure_aggregation = false;
  return s;
}

LocalTrainingOptions AllowingPlain() {
  LocalTrainingOptions o = Local();
  o.allow_plain_aggregation = true;
  return o;
}

std::string Fresh(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/simgrpc_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

struct Users {
  std::vector<UserText> users = SyntheticUsers(kUsers, 3000, 31);
  std::vector<std::string> train;
  Users() {
    for (const UserText& u : users) train.emplace_back(SplitTrainTest(u.text, 0.8).train);
  }
};

// Rounds through the in-memory transport; the last round's record in `last`.
absl::StatusOr<std::vector<float>> Simulate(Gpt2LmHead base, const Users& u, const RuntimeSettings& runtime,
                                            const LocalTrainingOptions& local, const std::string& dir,
                                            RoundRecord* last = nullptr) {
  absl::StatusOr<std::unique_ptr<ModelPool>> pool = ModelPool::Create(base, base->lora_config(), 1, 1);
  if (!pool.ok()) return pool.status();
  FederationSettings fs;
  fs.runtime = runtime;
  fs.runtime.stage_timeout_ms = 1000;
  fs.local = local;
  std::vector<VirtualUser> vusers;
  for (int i = 0; i < kUsers; ++i) vusers.push_back({u.users[i].user_id, u.train[i]});
  absl::StatusOr<std::unique_ptr<VirtualFederation>> sim = VirtualFederation::Create(pool->get(), Fresh(dir), vusers, fs);
  if (!sim.ok()) return sim.status();
  for (int r = 1; r <= kRounds; ++r) {
    absl::StatusOr<RoundRecord> rec = (*sim)->RunRound();
    if (!rec.ok()) return rec.status();
    if (!rec->committed) return absl::AbortedError(rec->abort_reason);
    if (rec->contributors != kUsers) return absl::InternalError("a user is missing from the sum");
    if (last) *last = *rec;
  }
  return (*sim)->GlobalAdapter();
}

// The same rounds through the real gRPC server, one client thread per user.
// The last round's metrics (JSON, as `admin rounds` shows them) in `last_metrics`.
std::vector<float> OverGrpc(Gpt2LmHead base, const Users& u, RuntimeSettings rs, const LocalTrainingOptions& local,
                            const std::string& dir, std::string* last_metrics = nullptr) {
  absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(Fresh(dir));
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return {};
  rs.stage_timeout_ms = 60000;
  rs.max_rounds = kRounds;
  rs.start_paused = true;  // every user joins first, as in the simulation
  absl::StatusOr<std::unique_ptr<CoordinatorRuntime>> rt =
      CoordinatorRuntime::Create(store->get(), base->BranchLayout(LoraBranch::kGlobal), rs);
  EXPECT_TRUE(rt.ok()) << rt.status();
  if (!rt.ok()) return {};
  ServeOptions so;
  so.insecure = true;  // loopback only; mutual TLS is covered by the e2e tests
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = StartCoordinatorServer(so, rt->get());
  EXPECT_TRUE(server.ok()) << server.status();
  if (!server.ok()) return {};
  absl::StatusOr<std::unique_ptr<ModelPool>> client_models = ModelPool::Create(base, base->lora_config(), kUsers, 1);
  EXPECT_TRUE(client_models.ok());
  absl::StatusOr<ResidualVault> vault = ResidualVault::Open(Fresh(dir + "_vault") + "/residual.key");
  EXPECT_TRUE(vault.ok());
  if (!client_models.ok() || !vault.ok()) return {};
  std::vector<ClientSession> sessions;
  for (int i = 0; i < kUsers; ++i) {
    absl::StatusOr<ClientSession> s = ClientSession::Create(
        base, u.users[i].user_id, [t = absl::string_view(u.train[i])] { return ByteTokenizer::Encode(t); }, local);
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return {};
    sessions.push_back(std::move(*s));
  }
  std::atomic<bool> stop{false};
  std::vector<absl::StatusOr<ClientRunStats>> stats(kUsers, absl::UnknownError("not run"));
  std::vector<std::thread> clients;
  for (int i = 0; i < kUsers; ++i) {
    clients.emplace_back([&, i] {
      torch::set_num_threads(1);
      ClientRunOptions o;
      o.connection.coordinator = "127.0.0.1:" + std::to_string((*server)->port());
      o.connection.insecure = true;
      o.connection.insecure_identity = u.users[i].user_id;
      o.rounds = kRounds;
      o.upload_residuals = false;
      stats[i] = RunClient(o, (*client_models)->model(i), {{u.users[i].user_id, &sessions[i]}}, *vault, stop);
    });
  }
  for (int tries = 0; tries < 500 && (*rt)->AdminStatus().eligible_users() < kUsers; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ((*rt)->AdminStatus().eligible_users(), kUsers);
  (*rt)->AdminSetPaused(false);
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kUsers; ++i) {
    EXPECT_TRUE(stats[i].ok()) << stats[i].status();
    if (stats[i].ok()) {
      EXPECT_EQ(stats[i]->rounds_committed, kRounds);
    }
  }
  (*server)->Shutdown();
  absl::StatusOr<std::vector<RoundRow>> rounds = (*store)->Rounds(1);
  EXPECT_TRUE(rounds.ok() && !rounds->empty());
  if (last_metrics && rounds.ok() && !rounds->empty()) *last_metrics = (*rounds)[0].metrics_json;
  return (*rt)->GlobalAdapter();
}

double Norm(const std::vector<float>& v) {
  double n = 0;
  for (float x : v) n += static_cast<double>(x) * x;
  return std::sqrt(n);
}

TEST(SimulationMatchesGrpcTest, SameSeedsAndUsersGiveTheSameGlobalAdapter) {
  // One thread everywhere, so that every floating-point reduction runs in
  // the same order in both runs.
  torch::set_num_threads(1);
  Gpt2LmHead base = testing::RandomModel();
  const Users u;
  absl::StatusOr<std::vector<float>> simulated = Simulate(base, u, Settings(), Local(), "sim");
  ASSERT_TRUE(simulated.ok()) << simulated.status();
  const std::vector<float> over_grpc = OverGrpc(base, u, Settings(), Local(), "grpc");
  ASSERT_EQ(simulated->size(), over_grpc.size());
  EXPECT_GT(Norm(*simulated), 0) << "the rounds changed the global adapter";
  EXPECT_EQ(*simulated, over_grpc) << "bit-identical global adapters";
}

TEST(SimulationMatchesGrpcTest, PlainAggregationCommitsWhatSecAggCommits) {
  // Without SecAgg+ the clients' encodings (rounding, noise) are the same
  // and the coordinator adds them in the clear: the same adapter as with
  // SecAgg+, in the simulation and over gRPC, for fewer bytes.
  torch::set_num_threads(1);
  Gpt2LmHead base = testing::RandomModel();
  const Users u;
  const RuntimeSettings plain = PlainSettings();
  const LocalTrainingOptions allowing = AllowingPlain();
  RoundRecord secure_round, plain_round;
  absl::StatusOr<std::vector<float>> secure = Simulate(base, u, Settings(), Local(), "sim_secure", &secure_round);
  absl::StatusOr<std::vector<float>> simulated = Simulate(base, u, plain, allowing, "sim_plain", &plain_round);
  ASSERT_TRUE(secure.ok()) << secure.status();
  ASSERT_TRUE(simulated.ok()) << simulated.status();
  EXPECT_GT(Norm(*simulated), 0);
  EXPECT_EQ(*simulated, *secure) << "plain and SecAgg+ sums are the same ring vector";
  std::string metrics;
  const std::vector<float> over_grpc = OverGrpc(base, u, plain, allowing, "grpc_plain", &metrics);
  EXPECT_EQ(*simulated, over_grpc);
  EXPECT_NE(metrics.find("\"aggregation\":\"plain\""), std::string::npos) << metrics;
  // SecAgg+ adds keys, encrypted shares and unmasking on top of the input.
  EXPECT_LT(plain_round.bytes_up_per_client, secure_round.bytes_up_per_client);
  EXPECT_LT(plain_round.bytes_down_per_client, secure_round.bytes_down_per_client);
}

TEST(SimulationMatchesGrpcTest, ClientsRefusePlainRoundsUnlessAllowed) {
  torch::set_num_threads(1);
  Gpt2LmHead base = testing::RandomModel();
  const Users u;
  const RuntimeSettings plain = PlainSettings();
  // Users who did not allow plain rounds when they joined are never sampled.
  absl::StatusOr<std::vector<float>> refused = Simulate(base, u, plain, Local(), "sim_refused");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kAborted) << refused.status();
  EXPECT_NE(refused.status().message().find("0 users may be sampled"), absl::string_view::npos) << refused.status();
  // A coordinator that invites one anyway is refused before any training.
  absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(Fresh("refusing_store"));
  ASSERT_TRUE(store.ok());
  absl::StatusOr<std::unique_ptr<RoundMachine>> machine =
      RoundMachine::Create(store->get(), base->BranchLayout(LoraBranch::kGlobal), plain.round);
  ASSERT_TRUE(machine.ok()) << machine.status();
  std::vector<std::string> names;
  for (const UserText& t : u.users) names.push_back(t.user_id);
  std::sort(names.begin(), names.end());
  auto invitations = (*machine)->Open(names, 1);
  ASSERT_TRUE(invitations.ok()) << invitations.status();
  fedpers::v1::RoundInvitation inv = invitations->at(u.users[0].user_id);
  inv.set_global_adapter((*machine)->round_global_adapter());
  ASSERT_EQ(inv.aggregation(), fedpers::v1::AGGREGATION_PLAIN);
  absl::StatusOr<ClientSession> unwilling = ClientSession::Create(
      base, u.users[0].user_id, [t = absl::string_view(u.train[0])] { return ByteTokenizer::Encode(t); }, Local());
  ASSERT_TRUE(unwilling.ok());
  absl::StatusOr<fedpers::v1::SecAggClientMessage> reply = unwilling->BeginRound(inv, base);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kFailedPrecondition) << reply.status();
  EXPECT_NE(reply.status().message().find("does not allow it"), absl::string_view::npos) << reply.status();
  EXPECT_EQ(unwilling->last_training_seconds(), 0) << "refused before training";
  // A willing client still refuses a noise split over more clients than the
  // round has (each update would carry less noise than the accounting says).
  absl::StatusOr<ClientSession> willing = ClientSession::Create(
      base, u.users[0].user_id, [t = absl::string_view(u.train[0])] { return ByteTokenizer::Encode(t); },
      AllowingPlain());
  ASSERT_TRUE(willing.ok());
  // An invitation delivered without the round's global adapter (the
  // machine keeps one copy; the deliverer attaches it) is named as such.
  fedpers::v1::RoundInvitation bare = inv;
  bare.clear_global_adapter();
  reply = willing->BeginRound(bare, base);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
  EXPECT_NE(reply.status().message().find("carries no global adapter"), absl::string_view::npos) << reply.status();
  fedpers::v1::RoundInvitation thin_noise = inv;
  thin_noise.mutable_dp()->set_min_clients(1000);
  reply = willing->BeginRound(thin_noise, base);
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
  EXPECT_NE(reply.status().message().find("splits the noise among 1000"), absl::string_view::npos) << reply.status();
  // In either mode the sum's ring must be the encoding's, and the vector the
  // one this client's layout pads to.
  for (auto aggregation : {fedpers::v1::AGGREGATION_PLAIN, fedpers::v1::AGGREGATION_SECAGG_PLUS}) {
    fedpers::v1::RoundInvitation other_ring = inv;
    other_ring.set_aggregation(aggregation);
    other_ring.mutable_secagg()->set_ring_bits(16);
    reply = willing->BeginRound(other_ring, base);
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
    EXPECT_NE(reply.status().message().find("sums in a 16-bit ring"), absl::string_view::npos) << reply.status();
    fedpers::v1::RoundInvitation longer = inv;
    longer.set_aggregation(aggregation);
    longer.mutable_secagg()->set_vector_length(2 * inv.secagg().vector_length());
    reply = willing->BeginRound(longer, base);
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument) << reply.status();
    EXPECT_NE(reply.status().message().find("vector length"), absl::string_view::npos) << reply.status();
  }
  EXPECT_EQ(willing->last_training_seconds(), 0) << "every bad invitation refused before training";
  EXPECT_TRUE(willing->BeginRound(inv, base).ok());
}

}  // namespace
}  // namespace fedpers
