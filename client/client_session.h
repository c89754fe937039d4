// One user's side of federated rounds: on an invitation it loads the global
// adapter, trains locally (global B_g and the user's residual), and runs the
// update pipeline (clip, DP noise, ring encoding, SecAgg+) over the resulting
// delta. The residual never leaves except sealed (ResidualVault).
#ifndef FEDPERS_CLIENT_CLIENT_SESSION_H_
#define FEDPERS_CLIENT_CLIENT_SESSION_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/gpt2.h"
#include "common/model/trainer.h"
#include "fedpers/v1/round.pb.h"
#include "fedpers/v1/secagg.pb.h"
#include "secure_agg/discrete_gaussian.h"
#include "secure_agg/secagg_client.h"

namespace fedpers {

enum class TrainingSchedule {
  kJoint,                // global and residual together
  kResidualAfterGlobal,  // global steps, then residual steps
};

struct LocalTrainingOptions {
  int64_t global_steps = 20;
  int64_t residual_steps = 20;
  TrainingSchedule schedule = TrainingSchedule::kResidualAfterGlobal;
  int64_t batch_size = 8;
  int64_t seq_len = 0;  // 0: n_positions
  double global_learning_rate = 3e-3;
  double residual_learning_rate = 3e-3;
  uint64_t seed = 1;
};

// Owns the user's data and residual; shares the (frozen) base model. Not
// thread-safe; one round at a time.
class ClientSession {
 public:
  // `model` carries both LoRA branches; the session swaps its own residual
  // in and out of it, so several sessions can share one model sequentially.
  static absl::StatusOr<ClientSession> Create(Gpt2LmHead model, std::string user_id, std::vector<int32_t> train_tokens,
                                              LocalTrainingOptions options);

  // Starts a round: checks the invitation (layout, ring, DP), loads B_g,
  // trains, and returns AdvertiseKeys. The plain delta it computed is kept
  // for inspection (last_delta) until the next round.
  absl::StatusOr<fedpers::v1::SecAggClientMessage> BeginRound(const fedpers::v1::RoundInvitation& invitation);
  absl::StatusOr<fedpers::v1::SecAggClientMessage> Handle(const fedpers::v1::SecAggServerMessage& message);

  const std::string& user_id() const { return user_id_; }
  const FlatLayout& global_layout() const { return model_->BranchLayout(LoraBranch::kGlobal); }
  const FlatLayout& residual_layout() const { return model_->BranchLayout(LoraBranch::kResidual); }
  uint64_t layout_fingerprint() const { return global_layout().Fingerprint(); }
  const std::vector<float>& last_delta() const { return last_delta_; }
  const std::vector<float>& residual() const { return residual_; }
  // Loads this user's residual into the shared model (for evaluation).
  absl::Status ActivateResidual();
  // Replaces the residual (e.g. with the copy the coordinator kept);
  // InvalidArgument for a wrong size or non-finite values, changing nothing.
  absl::Status RestoreResidual(std::vector<float> residual);

 private:
  ClientSession() = default;
  absl::Status Train(int64_t steps, double lr, bool global, bool residual, uint64_t seed);

  Gpt2LmHead model_{nullptr};
  std::string user_id_;
  std::vector<int32_t> train_tokens_;
  LocalTrainingOptions options_;
  std::vector<float> residual_;
  std::vector<float> last_delta_;
  std::optional<secagg::SecAggClient> secagg_;
  std::optional<dp::RandomSource> rng_;
};

}  // namespace fedpers

#endif  // FEDPERS_CLIENT_CLIENT_SESSION_H_
