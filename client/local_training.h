// What a client does locally in a round: how many steps on which adapter,
// in which order, with which optimizer settings. Torch-free, so that
// experiment configs and the command line can name it without libtorch.
#ifndef FEDPERS_CLIENT_LOCAL_TRAINING_H_
#define FEDPERS_CLIENT_LOCAL_TRAINING_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model_config.h"

namespace fedpers {

// How a round's local steps are split between the global adapter and the
// residual. Every schedule costs global_steps + residual_steps training
// steps, so schedules compare at equal compute.
enum class TrainingSchedule {
  kJoint,                // every step trains both branches
  kAlternating,          // steps alternate between the branches, in proportion
  kResidualAfterGlobal,  // the global steps, then the residual steps
};
// "joint", "alternating", "residual-after-global".
absl::StatusOr<TrainingSchedule> ParseTrainingSchedule(absl::string_view name);
const char* TrainingScheduleName(TrainingSchedule schedule);

struct LocalTrainingOptions {
  int64_t global_steps = 20;
  int64_t residual_steps = 20;
  // joint measured best at equal compute (docs/simulation.md).
  TrainingSchedule schedule = TrainingSchedule::kJoint;
  int64_t batch_size = 8;
  // Windows per forward/backward pass (0: the whole batch). Bounds the
  // activation memory of local training; the update is the same up to float
  // summation order (TrainOptions::micro_batch_size).
  int64_t micro_batch_size = 0;
  // Recompute each block's activations in backward instead of keeping them:
  // less memory, one more forward pass (TrainOptions::recompute_activations).
  bool recompute_activations = false;
  int64_t seq_len = 0;  // 0: n_positions
  double global_learning_rate = 3e-3;
  double residual_learning_rate = 3e-3;
  uint64_t seed = 1;  // batches and residual init, per (user, round)
  // Non-zero: stochastic rounding and DP noise are drawn from a stream seeded
  // by (noise_seed, user, round), so a simulation replays exactly. 0 (every
  // deployment): OpenSSL's CSPRNG.
  uint64_t noise_seed = 0;
  // Take part in rounds without secure aggregation (AGGREGATION_PLAIN), where
  // the coordinator sees this client's encoded update. Off by default, so a
  // coordinator cannot switch SecAgg+ off behind the clients' backs.
  bool allow_plain_aggregation = false;

  // InvalidArgument naming the first bad field (negative or all-zero step
  // counts, batch sizes, non-finite or non-positive learning rates).
  absl::Status Validate() const;
  // What only the model tells: a window beyond its n_positions
  // (InvalidArgument), a step that cannot fit in `available_bytes`
  // (CheckTrainingFitsInMemory; <= 0: unknown, not checked).
  absl::Status ValidateForModel(const ModelConfig& model, int64_t available_bytes) const;
};

}  // namespace fedpers

#endif  // FEDPERS_CLIENT_LOCAL_TRAINING_H_
