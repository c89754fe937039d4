#include "bench/simulate_bench.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/corpus.h"
#include "common/model/runtime.h"
#include "common/model_config.h"
#include "nlohmann/json.hpp"
#include "simulations/virtual_federation.h"

namespace fedpers {
namespace {

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM").
int64_t ProcStatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

absl::StatusOr<Gpt2LmHead> RandomBase(const SimulateBenchOptions& o) {
  absl::StatusOr<ModelConfig> config = NamedModelConfig(o.config);
  if (!config.ok()) return config.status();
  absl::StatusOr<Gpt2LmHead> m = CreateGpt2(*config, LoraConfig());
  if (!m.ok()) return m.status();
  torch::manual_seed(1);
  (*m)->InitBaseWeights();
  return m;
}

absl::Status RunScenario(const SimulateBenchOptions& o) {
  absl::StatusOr<Gpt2LmHead> base = RandomBase(o);
  if (!base.ok()) return base.status();
  const int cores = std::max(1, torch::get_num_threads());
  const int workers = o.workers > 0 ? o.workers : cores;
  absl::StatusOr<std::unique_ptr<ModelPool>> pool = ModelPool::Create(*base, (*base)->lora_config(), workers, cores);
  if (!pool.ok()) return pool.status();
  const std::vector<UserText> users = SyntheticUsers(static_cast<int>(o.users), static_cast<size_t>(o.user_bytes), 3);
  std::vector<VirtualUser> vusers;
  for (const UserText& u : users) vusers.push_back({u.user_id, u.text});
  FederationSettings fs;
  fs.runtime.round.clients_per_round = o.clients_per_round;
  fs.runtime.round.min_clients = std::max<int64_t>(2, o.clients_per_round / 2);
  fs.runtime.round.noise_multiplier = 0.3;
  fs.runtime.round.clip_norm = 0.5;
  fs.runtime.round.seed = 11;
  fs.runtime.stage_timeout_ms = 1000;
  fs.runtime.liveness_timeout_ms = int64_t{1} << 50;
  fs.local.global_steps = o.global_steps;
  fs.local.residual_steps = o.residual_steps;
  fs.local.batch_size = o.batch_size;
  fs.local.micro_batch_size = o.micro_batch_size;
  fs.local.recompute_activations = o.recompute_activations;
  fs.local.seq_len = o.seq_len;
  fs.local.noise_seed = 5;
  char dir_template[] = "/tmp/fedpers-bench-sim-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return absl::InternalError("cannot create a temporary directory");
  const std::string dir = dir_template;
  absl::StatusOr<std::unique_ptr<VirtualFederation>> fed = VirtualFederation::Create(pool->get(), dir, vusers, fs);
  if (!fed.ok()) return fed.status();
  const int64_t joined_anon_rss = ProcStatusBytes("VmRSS") - ProcStatusBytes("RssFile");
  nlohmann::json rounds = nlohmann::json::array();
  for (int64_t r = 0; r <= o.rounds; ++r) {
    absl::StatusOr<RoundRecord> rec = (*fed)->RunRound();
    if (!rec.ok()) return rec.status();
    if (!rec->committed) return absl::InternalError(absl::StrCat("round aborted: ", rec->abort_reason));
    if (r == 0) continue;  // warm-up
    rounds.push_back({{"wall", rec->wall_seconds},
                      {"training", rec->training_seconds},
                      {"coordinator", rec->coordinator_seconds}});
  }
  // File-backed pages (code and read-only data of the libraries) are
  // touched once and stay, so the value at the end is the value at the peak.
  nlohmann::json out = {{"peak_rss", ProcStatusBytes("VmHWM")},
                        {"joined_anon_rss", joined_anon_rss},
                        {"file_rss", ProcStatusBytes("RssFile")},
                        {"workers", workers},
                        {"residual_bytes", (*base)->BranchLayout(LoraBranch::kResidual).total_size() * 4},
                        {"rounds", rounds}};
  std::cout << out.dump() << "\n";
  fed->reset();
  std::filesystem::remove_all(dir);
  return absl::OkStatus();
}

// Runs this binary as a probe and parses its JSON line.
absl::StatusOr<nlohmann::json> Probe(const std::string& probe, const SimulateBenchOptions& o, int64_t users) {
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return absl::InternalError("cannot find this executable");
  exe[n] = '\0';
  const std::string cmd =
      absl::StrCat("'", exe, "' -q --threads ", o.threads, " bench simulate --probe ", probe, " --config ",
                   o.config, " --users ", users, " --clients-per-round ", o.clients_per_round, " --rounds ",
                   o.rounds, " --global-steps ", o.global_steps, " --residual-steps ", o.residual_steps,
                   " --batch-size ", o.batch_size, " --micro-batch-size ", o.micro_batch_size,
                   o.recompute_activations ? " --recompute-activations" : "", " --seq-len ", o.seq_len,
                   " --user-bytes ", o.user_bytes, " --workers ", o.workers);
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return absl::InternalError("cannot start the probe");
  std::string text;
  char buf[4096];
  while (size_t k = fread(buf, 1, sizeof(buf), p)) text.append(buf, k);
  const int status = pclose(p);
  if (status != 0) return absl::InternalError(absl::StrCat("probe '", probe, "' failed: ", text));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) return absl::InternalError(absl::StrCat("probe '", probe, "' printed: ", text));
  return j;
}

}  // namespace

absl::Status RunSimulateBenchProbe(const std::string& probe, const SimulateBenchOptions& o) {
  if (probe == "idle") {
    absl::StatusOr<Gpt2LmHead> base = RandomBase(o);
    if (!base.ok()) return base.status();
    std::cout << nlohmann::json({{"rss", ProcStatusBytes("VmRSS")}, {"file_rss", ProcStatusBytes("RssFile")}}).dump()
              << "\n";
    return absl::OkStatus();
  }
  if (probe == "run") return RunScenario(o);
  return absl::InvalidArgumentError(absl::StrCat("unknown probe '", probe, "'"));
}

absl::StatusOr<SimulateBenchResult> RunSimulateBench(const SimulateBenchOptions& options) {
  SimulateBenchOptions o = options;
  if (o.small_users == 0) o.small_users = o.clients_per_round;
  if (o.users < o.clients_per_round || o.small_users < o.clients_per_round || o.small_users >= o.users) {
    return absl::InvalidArgumentError("need clients_per_round <= small_users < users");
  }
  SimulateBenchResult r;
  r.users = o.users;
  r.small_users = o.small_users;
  r.clients_per_round = o.clients_per_round;
  auto say = [&](const std::string& what) {
    if (o.progress) std::fprintf(stderr, "bench simulate: %s\n", what.c_str());
  };
  say("idle process holding the base model");
  absl::StatusOr<nlohmann::json> idle = Probe("idle", o, o.users);
  if (!idle.ok()) return idle.status();
  say(absl::StrCat("simulation with ", o.users, " users (", o.rounds + 1, " rounds of ", o.clients_per_round, ")"));
  absl::StatusOr<nlohmann::json> big = Probe("run", o, o.users);
  if (!big.ok()) return big.status();
  say(absl::StrCat("simulation with ", o.small_users, " users"));
  absl::StatusOr<nlohmann::json> small = Probe("run", o, o.small_users);
  if (!small.ok()) return small.status();
  r.idle_rss_bytes = (*idle)["rss"].get<int64_t>();
  r.peak_rss_bytes = (*big)["peak_rss"].get<int64_t>();
  r.small_peak_rss_bytes = (*small)["peak_rss"].get<int64_t>();
  r.residual_bytes = (*big)["residual_bytes"].get<int64_t>();
  r.workers = (*big)["workers"].get<int64_t>();
  std::vector<double> coordinator;
  for (const auto& round : (*big)["rounds"]) {
    r.round_wall_seconds.push_back(round["wall"].get<double>());
    r.round_training_seconds.push_back(round["training"].get<double>());
    r.round_ratios.push_back(round["wall"].get<double>() / round["training"].get<double>());
    coordinator.push_back(round["coordinator"].get<double>());
  }
  r.median_ratio = Median(r.round_ratios);
  r.median_coordinator_seconds = Median(coordinator);
  r.median_training_seconds = Median(r.round_training_seconds);
  r.memory_ratio = static_cast<double>(r.peak_rss_bytes - r.idle_rss_bytes) /
                   (static_cast<double>(o.users) * static_cast<double>(r.residual_bytes));
  r.marginal_ratio = static_cast<double>(r.peak_rss_bytes - r.small_peak_rss_bytes) /
                     (static_cast<double>(o.users - o.small_users) * static_cast<double>(r.residual_bytes));
  r.fixed_bytes = r.small_peak_rss_bytes - r.idle_rss_bytes - o.small_users * r.residual_bytes;
  r.fixed_file_bytes = (*small)["file_rss"].get<int64_t>() - (*idle)["file_rss"].get<int64_t>();
  const int64_t idle_anon = r.idle_rss_bytes - (*idle)["file_rss"].get<int64_t>();
  r.fixed_joined_bytes =
      (*small)["joined_anon_rss"].get<int64_t>() - idle_anon - o.small_users * r.residual_bytes;
  return r;
}

}  // namespace fedpers
