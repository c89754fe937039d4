// `fedpers sweep`: global+residual over a grid of global and residual rank,
// ring bits, noise multiplier and clients per round, on the same users and
// base model; one table and the Pareto front of accuracy (up), epsilon
// (down) and bytes sent per client per round (down). Torch-free.
#ifndef FEDPERS_SIMULATIONS_SWEEP_H_
#define FEDPERS_SIMULATIONS_SWEEP_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "simulations/experiment.h"
#include "simulations/report.h"

namespace fedpers {

// An empty axis keeps the base config's value.
struct SweepGrid {
  std::vector<int64_t> global_rank, residual_rank;
  std::vector<uint32_t> ring_bits;
  // One noise axis at most: multipliers, or target epsilons (each point's
  // multiplier set for it; ExperimentConfig::target_epsilon).
  std::vector<double> noise_multiplier, target_epsilon;
  std::vector<int64_t> clients_per_round;
};

struct SweepPoint {
  int64_t global_rank = 0, residual_rank = 0;
  uint32_t ring_bits = 0;
  double noise_multiplier = 0;  // what the rounds used
  double target_epsilon = 0;    // 0: the multiplier was given
  int64_t clients_per_round = 0;
  double accuracy = 0, loss = 0;
  double epsilon = 0;  // infinity without noise
  // Against the coordinator, which knows who was sampled (no amplification):
  // infinity without noise or with central noise; nullopt when unknown.
  std::optional<double> epsilon_against_coordinator;
  double bytes_up = 0, bytes_down = 0;  // per client per round
  double client_seconds = 0;
  int64_t rounds_committed = 0, rounds_aborted = 0;
  std::string note;  // the run's first warning, then its first abort reason, if any
  bool pareto = false;
};

struct SweepResult {
  ExperimentConfig base;
  std::vector<SweepPoint> points;
};

// Runs every grid point (the base config with methods = global+residual and
// the point's values) in its own run directory, base.out/points/<#>/, which
// gets the point's report (as `fedpers simulate` writes it) and then
// sweep_point.json, its figures with the config they came from. A point
// whose directory already holds a record of the same config made by this
// build is not run again (unless !reuse_finished): an interrupted sweep
// resumes where it stopped, and a grid that grows runs only its new points. The base model is pretrained once, by the
// first point, when base.base has none.
absl::StatusOr<SweepResult> RunSweep(const ExperimentConfig& base, const SweepGrid& grid, bool progress,
                                     bool reuse_finished = true);

// Where a sweep of an experiment writes when not told: the experiment's run
// directory with "-sweep" appended ("runs/demo" -> "runs/demo-sweep"), so a
// sweep never mixes its points and report into the experiment's own.
std::string SweepRunDirectory(const std::string& experiment_out);

// The grid's points over `base` (which RunSweep gives its methods and base
// model first), in RunSweep's order, each with its out = base.out/points/<#>.
// A rank that differs from the base's keeps the base's scale alpha / r
// (alpha moves with it), so points differ in capacity, not in step size.
// InvalidArgument naming the first point that fails validation (the model
// is read as ExperimentConfig::ValidateForModel does, with `eligible`
// federated users when known: CountFederatedUsers).
absl::StatusOr<std::vector<ExperimentConfig>> SweepPointConfigs(const ExperimentConfig& base,
                                                                const SweepGrid& grid, int64_t eligible = 0);

// Marks the points no other point beats: one at least as accurate, with
// epsilon and bytes up no more than kParetoCostTolerance (relative) above,
// and better somewhere (more accurate, or a cost lower by more than the
// tolerance).
inline constexpr double kParetoCostTolerance = 0.01;
void MarkParetoFront(std::vector<SweepPoint>& points);

nlohmann::ordered_json SweepJson(const SweepResult& result);
std::string SweepTable(const SweepResult& result);
// sweep.csv, sweep.json, plots/sweep.{png,svg} and sweep.md in `dir`.
absl::StatusOr<ReportFiles> WriteSweepReport(const SweepResult& result, const std::string& dir);

}  // namespace fedpers

#endif  // FEDPERS_SIMULATIONS_SWEEP_H_
