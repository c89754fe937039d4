// `fedpers bench simulate`: what the simulation costs beyond local training.
//
// Efficiency: rounds of global+residual on N registered virtual users; per
// round, the wall time from opening to commit against the round's local
// training alone (the critical path of the training the workers did); the
// median ratio over the timed rounds.
// Memory: the peak RSS of a process running that simulation minus the RSS of
// an idle process holding the same base model, against N times the size of
// one residual; the marginal memory per user between two user counts; and
// the fixed part (what the smaller run needs beyond its residuals).
// Each measurement runs in a fresh child process (this binary), so peaks do
// not mix.
#ifndef FEDPERS_BENCH_SIMULATE_BENCH_H_
#define FEDPERS_BENCH_SIMULATE_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers {

struct SimulateBenchOptions {
  std::string config = "tiny";  // base model config (randomly initialized: cost, not quality, is measured)
  int64_t users = 1000;         // registered virtual users
  // The second user count, for the marginal memory per user and the fixed
  // working set; 0: clients_per_round (as few as a round needs, so the slope
  // spans the most users).
  int64_t small_users = 0;
  int64_t clients_per_round = 10;
  int64_t rounds = 4;  // timed, after one untimed round
  int64_t global_steps = 10, residual_steps = 10, batch_size = 8, seq_len = 0;
  int64_t micro_batch_size = 0;  // 0: the whole batch per pass
  bool recompute_activations = false;
  int64_t user_bytes = 2000;  // synthetic text per user
  int workers = 0;            // 0: one per core
  int threads = 0;            // intra-op threads of the children (0: every core)
  bool progress = true;
};

struct SimulateBenchResult {
  int64_t users = 0, small_users = 0, clients_per_round = 0, workers = 0;
  std::vector<double> round_wall_seconds, round_training_seconds, round_ratios;
  double median_ratio = 0;                // round wall / local training, median
  double median_coordinator_seconds = 0;  // per round
  double median_training_seconds = 0;     // local training per round (what the memory options cost)
  int64_t residual_bytes = 0;             // one user's residual (float32)
  int64_t idle_rss_bytes = 0;             // idle process holding the base model
  int64_t peak_rss_bytes = 0;             // simulation with `users`
  int64_t small_peak_rss_bytes = 0;       // simulation with `small_users`
  double memory_ratio = 0;    // (peak - idle) / (users * residual_bytes); target <= 1.1
  double marginal_ratio = 0;  // (peak - small peak) / ((users - small) * residual_bytes)
  // What does not grow with the users: small peak - idle - small * residual
  // (the training working set of the workers and the round's protocol state).
  int64_t fixed_bytes = 0;
  // Two disjoint parts of it: file-backed pages (library code and read-only
  // data) that the simulation touched, mostly in rounds, and an idle process
  // did not; and the anonymous memory the process holds once the users
  // joined, before any round (sessions, coordinator state, the pool's
  // models), beyond idle's and the residuals. The rest is the rounds'
  // anonymous working set.
  int64_t fixed_file_bytes = 0;
  int64_t fixed_joined_bytes = 0;
};

absl::StatusOr<SimulateBenchResult> RunSimulateBench(const SimulateBenchOptions& options);

// The child processes' side: "idle" loads the base model and reports its
// RSS; "run" runs the simulation and reports its rounds and peak RSS. Prints
// one JSON object on stdout.
absl::Status RunSimulateBenchProbe(const std::string& probe, const SimulateBenchOptions& options);

}  // namespace fedpers

#endif  // FEDPERS_BENCH_SIMULATE_BENCH_H_
