// One user's side of federated rounds: on an invitation it loads the global
// adapter into a model, trains locally (global B_g and the user's residual),
// and runs the update pipeline (clip, DP noise, ring encoding, SecAgg+) over
// the resulting delta. The residual never leaves except sealed
// (ResidualVault).
#ifndef FEDPERS_CLIENT_CLIENT_SESSION_H_
#define FEDPERS_CLIENT_CLIENT_SESSION_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/local_training.h"
#include "common/model/gpt2.h"
#include "common/model/trainer.h"
#include "fedpers/v1/round.pb.h"
#include "fedpers/v1/secagg.pb.h"
#include "secure_agg/discrete_gaussian.h"
#include "secure_agg/secagg_client.h"

namespace fedpers {

// The trainer settings a round's local training shares with every branch and
// schedule (batch, micro-batch, window, recompute); steps, learning rate and
// seed are left at their defaults for the caller.
TrainOptions LocalTrainOptions(const LocalTrainingOptions& options);

// Trains `model`'s global and residual branches on `tokens` for the given
// step counts, split by options.schedule (joint: one optimizer at the global
// learning rate), batches seeded by `seed`. Leaves every branch frozen
// (requires_grad false) afterwards. Returns the seconds spent.
absl::StatusOr<double> TrainBranches(Gpt2LmHead model, const std::vector<int32_t>& tokens, int64_t global_steps,
                                     int64_t residual_steps, const LocalTrainingOptions& options, uint64_t seed);

// The user's training tokens, produced on demand (a round at a time), so
// that an idle session holds no copy of its data.
using TokenSource = std::function<std::vector<int32_t>()>;

// Owns the user's residual and the state of the running round; borrows the
// model of each call. Not thread-safe; one round at a time. Several sessions
// may use one model in turn, and a session may use a different model (with
// the same configuration) in each round.
class ClientSession {
 public:
  // `model` fixes the layouts and initializes the residual; it is not kept.
  static absl::StatusOr<ClientSession> Create(Gpt2LmHead model, std::string user_id, TokenSource train_tokens,
                                              LocalTrainingOptions options);

  // Starts a round on `model`: checks the invitation (layout, ring, DP),
  // loads B_g and this user's residual, trains, and returns AdvertiseKeys
  // (SecAgg+) or, in a round without secure aggregation that the options
  // allow, the PlainInput that is the client's only message (refused with
  // FailedPrecondition, before training, when they do not).
  // `plain_delta`, when not null, receives the update before clipping and
  // noise (B_g' - B_g), for a client that records its updates; the session
  // keeps no copy, so a round holds one encoded vector per client.
  absl::StatusOr<fedpers::v1::SecAggClientMessage> BeginRound(const fedpers::v1::RoundInvitation& invitation,
                                                              Gpt2LmHead model,
                                                              std::vector<float>* plain_delta = nullptr);
  absl::StatusOr<fedpers::v1::SecAggClientMessage> Handle(const fedpers::v1::SecAggServerMessage& message);
  // Frees what the round held (its SecAgg+ state); the residual stays.
  void EndRound();

  const std::string& user_id() const { return user_id_; }
  bool allows_plain_aggregation() const { return options_.allow_plain_aggregation; }
  // Fingerprints of the adapter layouts the session was created for; a model
  // it is given must have the same (its layouts serve the session).
  uint64_t layout_fingerprint() const { return global_fingerprint_; }
  uint64_t residual_fingerprint() const { return residual_fingerprint_; }
  const std::vector<float>& residual() const { return residual_; }
  // Seconds the last BeginRound spent in local training (optimizer steps).
  double last_training_seconds() const { return last_training_seconds_; }
  // Loads this user's residual into `model` (for evaluation).
  absl::Status ActivateResidual(Gpt2LmHead model) const;
  // Replaces the residual (e.g. with the copy the coordinator kept);
  // InvalidArgument for a wrong size or non-finite values, changing nothing.
  absl::Status RestoreResidual(std::vector<float> residual);

 private:
  ClientSession() = default;

  std::string user_id_;
  TokenSource train_tokens_;
  LocalTrainingOptions options_;
  // Fingerprints, not layouts: thousands of sessions share the models' layouts.
  uint64_t global_fingerprint_ = 0, residual_fingerprint_ = 0;
  std::vector<float> residual_;
  double last_training_seconds_ = 0;
  std::optional<secagg::SecAggClient> secagg_;
  std::optional<dp::RandomSource> csprng_;  // when options_.noise_seed == 0
};

}  // namespace fedpers

#endif  // FEDPERS_CLIENT_CLIENT_SESSION_H_
