#include "bench/round_bench.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <random>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "common/model_config.h"
#include "common/progress.h"
#include "coordinator/round_machine.h"
#include "secure_agg/dp_mechanisms.h"
#include "secure_agg/secagg_client.h"

namespace fedpers {
namespace {

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

absl::StatusOr<std::vector<RoundBenchFigure>> RunRoundBench(std::vector<int64_t> client_counts, int64_t rounds,
                                                            bool progress) {
  absl::StatusOr<FlatLayout> layout = GlobalAdapterLayout(ModelConfig(), LoraConfig());
  if (!layout.ok()) return layout.status();
  std::vector<RoundBenchFigure> out;
  ProgressBar bar("bench round", static_cast<int64_t>(client_counts.size()) * rounds, "round", stderr, progress);
  int64_t done = 0;
  for (int64_t n : client_counts) {
    const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(), "/fedpers_bench_round_",
                                         ::getpid(), "_", n);
    std::filesystem::remove_all(dir);
    absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(dir);
    if (!store.ok()) return store.status();
    RoundSettings settings;
    settings.clients_per_round = n;
    settings.min_clients = std::min<int64_t>(n, 3);
    settings.noise_multiplier = 0.5;  // the full privacy path: noise, ledger
    settings.epsilon_budget = 1e9;
    absl::StatusOr<std::unique_ptr<RoundMachine>> machine = RoundMachine::Create(store->get(), *layout, settings);
    if (!machine.ok()) return machine.status();
    std::vector<std::string> names;
    for (int64_t i = 0; i < n; ++i) names.push_back(absl::StrCat("client", i));
    std::mt19937 gen(1);
    std::normal_distribution<float> normal(0, 1e-3f);
    std::vector<float> update(static_cast<size_t>(layout->total_size()));
    dp::RandomSource rng = dp::RandomSource::FromTestSeed(1);
    std::vector<double> coordinator_times;
    double up = 0, down = 0;
    for (int64_t r = 0; r < rounds; ++r) {
      double coord = 0;
      double t0 = Now();
      absl::StatusOr<std::map<std::string, fedpers::v1::RoundInvitation>> inv = (*machine)->Open(names, r + 1);
      coord += Now() - t0;
      if (!inv.ok()) return inv.status();
      std::map<std::string, secagg::SecAggClient> clients;
      std::vector<std::pair<std::string, fedpers::v1::SecAggClientMessage>> inbox;
      for (auto& [name, invitation] : *inv) {
        // What a client receives: the invitation with the round's adapter.
        invitation.set_global_adapter((*machine)->round_global_adapter());
        down += static_cast<double>(invitation.ByteSizeLong());
        invitation.clear_global_adapter();
        for (float& v : update) v = normal(gen);
        auto ring = dp::RingFromProto(invitation.ring());
        auto dpc = dp::DpFromProto(invitation.dp());
        if (!ring.ok() || !dpc.ok()) return absl::InternalError("bad invitation");
        auto enc = dp::PrivatizeForSecAgg(update, *ring, *dpc, rng);
        if (!enc.ok()) return enc.status();
        auto c = secagg::SecAggClient::Create(invitation.secagg(), invitation.secagg_id(), std::move(*enc));
        if (!c.ok()) return c.status();
        auto start = c->Start();
        if (!start.ok()) return start.status();
        clients.emplace(name, std::move(*c));
        inbox.emplace_back(name, *start);
      }
      while (true) {
        t0 = Now();
        for (auto& [name, msg] : inbox) {
          up += static_cast<double>(msg.ByteSizeLong());
          if (absl::Status s = (*machine)->Handle(name, msg); !s.ok()) return s;
        }
        absl::StatusOr<RoundMachine::StageOutput> stage = (*machine)->FinishStage();
        coord += Now() - t0;
        if (!stage.ok()) return stage.status();
        if (stage->committed) break;
        inbox.clear();
        for (auto& [name, msg] : stage->outgoing) {
          down += static_cast<double>(msg.ByteSizeLong());
          auto reply = clients.at(name).Handle(msg);
          if (!reply.ok()) return reply.status();
          inbox.emplace_back(name, *reply);
        }
      }
      coordinator_times.push_back(coord);
      bar.Update(++done, absl::StrCat(n, " clients"));
    }
    std::sort(coordinator_times.begin(), coordinator_times.end());
    RoundBenchFigure f;
    f.clients = n;
    f.adapter_values = layout->total_size();
    f.coordinator_seconds = coordinator_times[coordinator_times.size() / 2];
    f.bytes_up_per_client = up / static_cast<double>(n * rounds);
    f.bytes_down_per_client = down / static_cast<double>(n * rounds);
    f.rounds = rounds;
    out.push_back(f);
    store->reset();
    std::filesystem::remove_all(dir);
  }
  bar.Finish();
  return out;
}

}  // namespace fedpers
