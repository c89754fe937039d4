// The simulation runs the deployment's round logic: for the same seeds and
// users, rounds through the in-memory transport and rounds through the real
// gRPC server with `RunClient` clients (one thread each, on loopback) commit
// bit-identical global adapters, DP noise and FedAdam included.
#include <gtest/gtest.h>

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

std::string Fresh(const std::string& name) {
  const std::string d = ::testing::TempDir() + "/simgrpc_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

TEST(SimulationMatchesGrpcTest, SameSeedsAndUsersGiveTheSameGlobalAdapter) {
  // One thread everywhere, so that every floating-point reduction runs in
  // the same order in both runs.
  torch::set_num_threads(1);
  Gpt2LmHead base = testing::RandomModel();
  const std::vector<UserText> users = SyntheticUsers(kUsers, 3000, 31);
  std::vector<std::string> train;
  for (const UserText& u : users) train.emplace_back(SplitTrainTest(u.text, 0.8).train);

  // Simulation.
  absl::StatusOr<std::unique_ptr<ModelPool>> sim_pool = ModelPool::Create(base, base->lora_config(), 1, 1);
  ASSERT_TRUE(sim_pool.ok()) << sim_pool.status();
  FederationSettings fs;
  fs.runtime = Settings();
  fs.runtime.stage_timeout_ms = 1000;
  fs.local = Local();
  std::vector<VirtualUser> vusers;
  for (int i = 0; i < kUsers; ++i) vusers.push_back({users[i].user_id, train[i]});
  absl::StatusOr<std::unique_ptr<VirtualFederation>> sim =
      VirtualFederation::Create(sim_pool->get(), Fresh("sim"), vusers, fs);
  ASSERT_TRUE(sim.ok()) << sim.status();
  for (int r = 1; r <= kRounds; ++r) {
    absl::StatusOr<RoundRecord> rec = (*sim)->RunRound();
    ASSERT_TRUE(rec.ok()) << rec.status();
    ASSERT_TRUE(rec->committed) << rec->abort_reason;
    EXPECT_EQ(rec->contributors, kUsers);
  }
  const std::vector<float> simulated = (*sim)->GlobalAdapter();

  // The same over gRPC: a coordinator server and one client per user.
  absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(Fresh("grpc"));
  ASSERT_TRUE(store.ok()) << store.status();
  RuntimeSettings rs = Settings();
  rs.stage_timeout_ms = 60000;
  rs.max_rounds = kRounds;
  rs.start_paused = true;  // every user joins first, as in the simulation
  absl::StatusOr<std::unique_ptr<CoordinatorRuntime>> rt =
      CoordinatorRuntime::Create(store->get(), base->BranchLayout(LoraBranch::kGlobal), rs);
  ASSERT_TRUE(rt.ok()) << rt.status();
  ServeOptions so;
  so.insecure = true;  // loopback only; mutual TLS is covered by the e2e tests
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = StartCoordinatorServer(so, rt->get());
  ASSERT_TRUE(server.ok()) << server.status();
  absl::StatusOr<std::unique_ptr<ModelPool>> client_models = ModelPool::Create(base, base->lora_config(), kUsers, 1);
  ASSERT_TRUE(client_models.ok());
  const std::string vault_dir = Fresh("vault");
  absl::StatusOr<ResidualVault> vault = ResidualVault::Open(vault_dir + "/residual.key");
  ASSERT_TRUE(vault.ok());
  std::vector<ClientSession> sessions;
  for (int i = 0; i < kUsers; ++i) {
    absl::StatusOr<ClientSession> s = ClientSession::Create(
        base, users[i].user_id, [t = absl::string_view(train[i])] { return ByteTokenizer::Encode(t); }, Local());
    ASSERT_TRUE(s.ok()) << s.status();
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
      o.connection.insecure_identity = users[i].user_id;
      o.rounds = kRounds;
      o.upload_residuals = false;
      stats[i] = RunClient(o, (*client_models)->model(i), {{users[i].user_id, &sessions[i]}}, *vault, stop);
    });
  }
  for (int tries = 0; tries < 500 && (*rt)->AdminStatus().eligible_users() < kUsers; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ((*rt)->AdminStatus().eligible_users(), kUsers);
  (*rt)->AdminSetPaused(false);
  for (std::thread& t : clients) t.join();
  for (int i = 0; i < kUsers; ++i) {
    ASSERT_TRUE(stats[i].ok()) << stats[i].status();
    EXPECT_EQ(stats[i]->rounds_committed, kRounds);
  }
  (*server)->Shutdown();
  const std::vector<float> over_grpc = (*rt)->GlobalAdapter();

  ASSERT_EQ(simulated.size(), over_grpc.size());
  double norm = 0;
  for (float v : simulated) norm += static_cast<double>(v) * v;
  EXPECT_GT(norm, 0) << "the rounds changed the global adapter";
  EXPECT_EQ(simulated, over_grpc) << "bit-identical global adapters";
}

}  // namespace
}  // namespace fedpers
