// Server-side optimizers on the flat global adapter vector, behind one
// interface so that the round loop never knows which algorithm runs
// (Flower's Strategy idea): FedAvg, and the adaptive FedAdagrad, FedAdam and
// FedYogi of Reddi et al. (ICLR 2021).
#ifndef FEDPERS_COORDINATOR_STRATEGY_H_
#define FEDPERS_COORDINATOR_STRATEGY_H_

#include <Eigen/Core>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace fedpers {

struct StrategyConfig {
  std::string name = "fedavg";  // fedavg | fedadagrad | fedadam | fedyogi
  double server_learning_rate = 1.0;  // eta; adaptive methods want ~1e-2
  double beta1 = 0.9;
  double beta2 = 0.99;
  double tau = 1e-3;  // adaptivity: v starts at tau^2, denominators sqrt(v) + tau
  absl::Status Validate() const;
};

// Owns its optimizer state (moments). Not thread-safe.
class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual std::string name() const = 0;

  // Updates `global` in place from the round's mean client delta (the
  // pseudo-gradient, already decoded from the secure sum and divided by the
  // number of contributions). InvalidArgument, changing nothing, for a size
  // mismatch or non-finite values.
  virtual absl::Status Apply(Eigen::Ref<Eigen::VectorXf> global, const Eigen::Ref<const Eigen::VectorXf>& mean_delta) = 0;

  // Named state vectors, for persistence, and their restoration (sizes must
  // match the global vector the strategy was used with, or state be empty).
  virtual std::map<std::string, Eigen::VectorXf> State() const = 0;
  virtual absl::Status LoadState(const std::map<std::string, Eigen::VectorXf>& state) = 0;
};

// InvalidArgument for an unknown name or bad hyper-parameters.
absl::StatusOr<std::unique_ptr<Strategy>> CreateStrategy(const StrategyConfig& config);

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_STRATEGY_H_
