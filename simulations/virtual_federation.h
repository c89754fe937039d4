// Virtual clients in one process, carried by an in-memory transport to the
// deployment's CoordinatorRuntime: each user polls, trains through its
// ClientSession and uploads SecAgg+ messages exactly as `fedpers client run`
// does over gRPC, under a simulated clock for stage deadlines. Sampled
// clients train in parallel on a pool of models that share one frozen base.
#ifndef FEDPERS_SIMULATIONS_VIRTUAL_FEDERATION_H_
#define FEDPERS_SIMULATIONS_VIRTUAL_FEDERATION_H_

#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/client_session.h"
#include "common/model/gpt2.h"
#include "coordinator/runtime.h"
#include "coordinator/state_store.h"
#include "simulations/experiment.h"

namespace fedpers {

// `workers` models with their own LoRA branches over one copy of the frozen
// base weights. Thread-compatible: ParallelFor gives each model to one
// thread at a time.
class ModelPool {
 public:
  // The pool's models take `lora`'s branches; base weights are `base`'s
  // tensors themselves (not copies). `workers` >= 1; the threads of each
  // worker are `cores / workers` (at least 1).
  static absl::StatusOr<std::unique_ptr<ModelPool>> Create(Gpt2LmHead base, const LoraConfig& lora, int workers,
                                                           int cores);

  int size() const { return static_cast<int>(models_.size()); }
  Gpt2LmHead model(int worker) const { return models_[static_cast<size_t>(worker)]; }

  // Runs fn(item, worker, model) for every item in [0, n), items taken in
  // order by the first free worker; returns the first error (the other
  // workers finish their current item and stop). With one worker it runs on
  // the calling thread.
  absl::Status ParallelFor(int64_t n, const std::function<absl::Status(int64_t item, int worker, Gpt2LmHead model)>& fn);

 private:
  ModelPool() = default;
  std::vector<Gpt2LmHead> models_;
  int threads_per_worker_ = 1;
};

struct VirtualUser {
  std::string id;
  absl::string_view train_text;  // must outlive the federation
};

struct FederationSettings {
  RuntimeSettings runtime;  // stage deadlines run on the simulated clock
  LocalTrainingOptions local;
  double dropout = 0;  // per sampled client and SecAgg+ stage
  uint64_t seed = 1;   // dropouts
};

// Owns the coordinator runtime (state in its own directory) and one
// ClientSession per user. Not thread-safe.
class VirtualFederation {
 public:
  // Starts a fresh coordinator in `state_dir` (emptied first) over the
  // pool's global layout, and joins every user.
  static absl::StatusOr<std::unique_ptr<VirtualFederation>> Create(ModelPool* pool, const std::string& state_dir,
                                                                   std::vector<VirtualUser> users,
                                                                   FederationSettings settings);

  // Runs the next round from opening to commit or abort. A round that
  // cannot open (too few users, privacy budget) comes back aborted with the
  // coordinator's reason. Errors are for what a deployment would also stop
  // on (a client's model error, the store).
  absl::StatusOr<RoundRecord> RunRound();

  std::vector<float> GlobalAdapter() const { return runtime_->GlobalAdapter(); }
  size_t num_users() const { return users_.size(); }
  const VirtualUser& user(size_t i) const { return users_[i]; }
  ClientSession& session(size_t i) { return sessions_[i]; }
  int64_t participations(size_t i) const { return participations_[i]; }

 private:
  VirtualFederation() = default;

  ModelPool* pool_ = nullptr;
  FederationSettings settings_;
  std::vector<VirtualUser> users_;
  std::vector<ClientSession> sessions_;
  std::vector<int64_t> participations_;
  std::map<std::string, size_t> index_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<CoordinatorRuntime> runtime_;
  int64_t clock_ms_ = 0;
  std::mt19937_64 dropout_rng_;
};

}  // namespace fedpers

#endif  // FEDPERS_SIMULATIONS_VIRTUAL_FEDERATION_H_
