// The coordinator's round state machine, independent of any transport: the
// gRPC service and the simulation feed it client messages and close stages
// at their deadlines; it samples clients, runs SecAgg+ through
// SecAggServer (or, with secure aggregation off, adds the clients' plain
// ring-encoded inputs), decodes the sum, applies the strategy, charges the
// privacy ledger and commits the round atomically to the StateStore.
//
//   SecAgg+: kIdle --Open--> kKeys --FinishStage--> kShares --> kInputs
//            --> kUnmasking --FinishStage--> (commit) kIdle
//   plain:   kIdle --Open--> kInputs --FinishStage--> (commit) kIdle
//   any stage --Abort/failure--> kIdle
//
// Not thread-safe: the runtime serializes calls.
#ifndef FEDPERS_COORDINATOR_ROUND_MACHINE_H_
#define FEDPERS_COORDINATOR_ROUND_MACHINE_H_

#include <Eigen/Core>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/flat_layout.h"
#include "coordinator/privacy_ledger.h"
#include "coordinator/state_store.h"
#include "coordinator/strategy.h"
#include "fedpers/v1/round.pb.h"
#include "fedpers/v1/secagg.pb.h"
#include "nlohmann/json_fwd.hpp"
#include "secure_agg/dp_mechanisms.h"
#include "secure_agg/secagg_server.h"

namespace fedpers {

struct RoundSettings {
  // SecAgg+'s bound on a round's clients (ValidateParams).
  static constexpr int64_t kMaxClientsPerRound = int64_t{1} << 20;
  int64_t clients_per_round = 10;  // sampled uniformly from the eligible clients
  int64_t min_clients = 3;         // fewer survivors than this abort the round
  // SecAgg ring bits: 0 sizes the ring per round (ChooseRing: the fewest
  // bits that keep the mean's rounding within S / 256); 8 to 32 fix it.
  uint32_t ring_bits = 0;
  // S. Bounded so that the ring and the noise stay meaningful: below
  // kMinClipNorm a float32 adapter update is clipped to nothing (the sampler's
  // variance then rounds up to its 2^-20 floor), beyond kMaxClipNorm the
  // scaled noise overflows float adapters.
  static constexpr double kMinClipNorm = 1e-6;
  static constexpr double kMaxClipNorm = 1e6;
  double clip_norm = 1.0;
  double noise_multiplier = 0.0;   // z; 0: no DP noise
  bool central_noise = false;      // trusted coordinator adds the noise instead of the clients
  bool rotate = true;              // Hadamard rotation before quantization
  // false: no SecAgg+; each client sends its encoded update in the clear
  // (AGGREGATION_PLAIN) and the coordinator sees it. Clipping, DP noise and
  // the ring encoding are the same, so the two modes differ only in what
  // the coordinator learns and in the protocol's cost.
  bool secure_aggregation = true;
  uint32_t threshold = 0;          // SecAgg t; 0: derived from the assumptions, or 2/3 of the sample when small
  StrategyConfig strategy;
  double delta = 1e-5;
  // The ledger's epsilon may not exceed it (infinity: no limit). A finite
  // one needs noise: a round without it costs an infinite epsilon.
  double epsilon_budget = std::numeric_limits<double>::infinity();
  // A second budget, on each user's epsilon against the coordinator itself
  // (PrivacyLedger::epsilon_against_coordinator: no amplification, since the
  // coordinator draws the sample). Infinity: none. A finite one needs noise
  // the clients add (not central noise, which hides nothing from it).
  double epsilon_budget_against_coordinator = std::numeric_limits<double>::infinity();
  // Where the global adapter starts before any committed round
  // (InitialGlobalAdapter); empty: all zeros (B_g = 0).
  std::vector<float> initial_global;
  // Non-zero: round r samples and rotates with a seed derived from (seed, r),
  // so a simulation or test replays exactly. 0: fresh randomness per round.
  uint64_t seed = 0;
  absl::Status Validate() const;
};

// Validate(), and that a round of min_clients and one of clients_per_round
// clients over `layout_size` values can be planned: a SecAgg ring that fits
// the clipped, noised sum (ChooseRing) and a threshold the sample can meet.
// Config time, so that an unusable setting is refused before serving rather
// than aborting every round.
absl::Status CheckRoundsCanOpen(const RoundSettings& settings, size_t layout_size);

// The ledger's epsilon (at settings.delta) after `rounds` rounds of
// `settings` over `layout_size` values, each sampling clients_per_round of
// `eligible` users who are eligible in every round: what such a federation
// reports once they all committed (exactly: the same charges in the same
// order). InvalidArgument for bad settings or counts, or when no round can be
// planned.
absl::StatusOr<double> ProjectedEpsilon(const RoundSettings& settings, size_t layout_size, int64_t eligible,
                                        int64_t rounds);

// A noise multiplier whose ProjectedEpsilon after `rounds` (>= 1) is at
// most `target_epsilon` (> 0), found by doubling and bisecting to 0.1%: the
// smallest where epsilon falls as z grows. It need not everywhere: the ring
// changes with z (sized per round, the charged z may dip by up to 1/256; in
// a fixed ring_bits the scale halves in steps, and the charged z with it),
// so the result is the smallest only locally. settings.noise_multiplier is
// ignored. InvalidArgument when none up to 1e4 reaches the target, or none
// that the settings' ring can carry (a fixed ring_bits caps the noise).
absl::StatusOr<double> NoiseMultiplierForEpsilon(RoundSettings settings, size_t layout_size, int64_t eligible,
                                                 int64_t rounds, double target_epsilon);

// The noise multiplier the ledger charges a round of `settings` in `ring`
// over m ring values with the clients' noise `dp`: z lowered for the
// rounding (dp::AccountedNoiseMultiplier) and, when the clients add the
// noise, for the discrete Gaussians' own loss
// (dp::DistributedDiscreteAccountedMultiplier over the dp.min_clients shares
// a committed sum carries at least; their tau stored in *tau when given).
double ChargedNoiseMultiplier(const RoundSettings& settings, const secagg::RingConfig& ring,
                              const dp::DistributedDpConfig& dp, size_t m, double* tau = nullptr);

// A sentence for the operator when the discreteness of the noise lowers what
// the ledger charges by more than 1% in a round of min_clients or
// clients_per_round clients (a narrow fixed ring with noise: epsilon grows
// far beyond what z suggests); "" otherwise, and when no round can be
// planned (CheckRoundsCanOpen says why).
std::string DiscreteNoiseWarning(const RoundSettings& settings, size_t layout_size);

// The ring of a round of n sampled clients and m ring values, with noise
// `dp` (its min_clients is the fewest summands a commit has).
// - ring_bits 8 to 32: the finest ring of that many bits, i.e. the largest
//   power-of-two scale whose noised sum cannot wrap, and whose per-client
//   noise stays within the exact sampler's range (beyond 1e5 ring steps of
//   noise, finer quantization buys nothing). InvalidArgument when even
//   scale 1 can wrap.
// - ring_bits 0: the finest ring of the fewest bits (from 8) that keeps the
//   decoded mean's RMS rounding error, at most sqrt(m / (4 min_clients)) /
//   scale in L2 (stochastic rounding's variance is at most 1/4 a coordinate),
//   within S / 256, whose rounding costs at most 1/256 of the noise
//   multiplier in the ledger (dp::AccountedNoiseMultiplier), and which, with
//   noise, gives each client at least 4 ring steps of it: with fewer than
//   about 2, the discrete Gaussians' own privacy loss (tau in Kairouz et
//   al.'s bound, which the ledger charges: ChargedNoiseMultiplier)
//   is no longer negligible. When none below 32 does, the fewest bits whose
//   finest ring reaches the 32-bit ring's scale (the noise cap may limit the
//   scale before the width does); the 1/256 and 4-step conditions may then
//   fail, and the ledger still charges what the ring costs.
absl::StatusOr<secagg::RingConfig> ChooseRing(uint32_t ring_bits, double clip_norm, int64_t n, size_t m,
                                              const dp::DistributedDpConfig& dp);

struct RoundSummary {
  int64_t round = 0;
  int64_t sampled = 0, survivors = 0;
  double epsilon = 0;
  double update_norm = 0;  // L2 norm of the applied mean delta
  // PrivacyLedger::epsilon_against_coordinator after the round.
  std::optional<double> epsilon_against_coordinator = 0.0;
};

enum class RoundStage { kIdle, kKeys, kShares, kInputs, kUnmasking };

class RoundMachine {
 public:
  // Resumes from the store's latest committed round (global adapter, ledger,
  // strategy state) or starts from B_g = 0; rounds a crash left open are
  // marked aborted. `store` must outlive the machine.
  static absl::StatusOr<std::unique_ptr<RoundMachine>> Create(StateStore* store, FlatLayout layout,
                                                              RoundSettings settings);

  // Opens the next round over `eligible` client names (sorted, unique):
  // refuses (FailedPrecondition) when fewer than min_clients are eligible or
  // the privacy budget would be exceeded; samples with `seed`. The
  // invitations leave global_adapter empty: it is the same for every client,
  // so the round keeps one copy (round_global_adapter()) and whoever delivers
  // an invitation attaches it then, instead of the coordinator holding one
  // copy per sampled client until each has polled.
  absl::StatusOr<std::map<std::string, fedpers::v1::RoundInvitation>> Open(std::span<const std::string> eligible,
                                                                            uint64_t seed);

  // A message from a sampled client of the current round: SecAgg+ messages,
  // or its one PlainInput when secure aggregation is off.
  absl::Status Handle(const std::string& client, const fedpers::v1::SecAggClientMessage& message);

  struct StageOutput {
    std::map<std::string, fedpers::v1::SecAggServerMessage> outgoing;  // by client name
    std::optional<RoundSummary> committed;  // set when the round committed
  };
  // Ends the current stage (its deadline passed or every client answered).
  // After the unmasking stage the round commits. A round that cannot
  // continue is aborted (recorded in the store) and the status says why.
  absl::StatusOr<StageOutput> FinishStage();
  // Aborts the open round. Users the coordinator may have seen
  // (ExposedUsers) are charged against the coordinator
  // (PrivacyLedger::RecordExposure).
  absl::Status Abort(const std::string& reason);

  RoundStage stage() const { return stage_; }
  int64_t current_round() const { return round_; }
  int64_t last_committed_round() const { return last_committed_; }
  const Eigen::VectorXf& global() const { return global_; }
  const PrivacyLedger& ledger() const { return *ledger_; }
  // Clients expected to answer in the current stage.
  std::vector<std::string> expected() const;
  // The open round's global adapter as safetensors bytes, what each of its
  // invitations carries; empty while idle.
  const std::string& round_global_adapter() const { return round_adapter_; }

 private:
  RoundMachine() = default;
  absl::Status HandlePlainInput(const std::string& client, uint32_t id, const fedpers::v1::PlainInput& input);
  absl::StatusOr<RoundSummary> Commit(std::vector<uint32_t> ring_sum);
  // Ends the round: commits the sum, or aborts with the error (its own or
  // the commit's); either way the machine is idle afterwards.
  absl::StatusOr<StageOutput> CommitOrAbort(absl::StatusOr<std::vector<uint32_t>> ring_sum);
  // SecAgg ids whose inputs are in the sum.
  std::vector<uint32_t> ContributorIds() const;
  // Whom the coordinator may have seen in the open round, were it to end
  // without a commit: a plain round's sampled users; a SecAgg+ round's
  // survivors once unmasking was asked for; nobody before that.
  std::vector<std::string> ExposedUsers() const;
  // Charges the ledger, against the coordinator, for the rounds aborted
  // since the last commit (their exposure is in no snapshot): ExposedUsers
  // as the store recorded them, at the round's coordinator-facing multiplier.
  absl::Status ReplayExposures();
  // A ledger restored from a snapshot that may miss rounds without noise
  // (PrivacyLedger::MayMissRoundsWithoutNoise): charges every committed
  // round whose stored config says noise_multiplier 0, for every stored user
  // (who was eligible is not stored) and its recorded contributors (every
  // stored user where the metrics do not list them).
  absl::Status ChargeRoundsWithoutNoise();
  // Calls `visit` with the stored rounds, newest first, and their config
  // and metrics (null where not JSON) until it returns false or an error.
  // A stored value of the wrong shape (an exception from `visit`) is
  // DataLoss naming the round and what the value `cannot_say`.
  using StoredRoundVisitor = std::function<absl::StatusOr<bool>(const RoundRow&, const nlohmann::json& config,
                                                                const nlohmann::json& metrics)>;
  absl::Status ForEachStoredRound(absl::string_view cannot_say, const StoredRoundVisitor& visit);

  StateStore* store_ = nullptr;
  FlatLayout layout_;
  RoundSettings settings_;
  std::unique_ptr<Strategy> strategy_;
  std::optional<PrivacyLedger> ledger_;
  Eigen::VectorXf global_;
  int64_t last_committed_ = 0;

  RoundStage stage_ = RoundStage::kIdle;
  int64_t round_ = 0;
  std::optional<secagg::SecAggServer> server_;
  std::string round_adapter_;             // the open round's global adapter (safetensors)
  std::map<std::string, uint32_t> ids_;   // client name -> SecAgg id
  std::map<uint32_t, std::string> names_;
  std::vector<std::string> eligible_;
  secagg::RingConfig ring_;
  dp::DistributedDpConfig dp_;
  std::map<std::string, bool> answered_;
  // Plain aggregation: the running ring sum and who is in it.
  std::vector<uint32_t> plain_sum_;
  std::vector<uint32_t> plain_ids_;
  uint64_t vector_length_ = 0;
  double accounted_noise_multiplier_ = 0;  // AccountedNoiseMultiplier of the open round
  double coordinator_noise_multiplier_ = 0;  // what hides its contributors from the coordinator
  int64_t min_survivors_ = 0;
};

// The seed of round `round` when RoundSettings::seed is set.
uint64_t RoundSeed(uint64_t seed, int64_t round);
// A uniform sample of `n` of `eligible`, returned sorted. The coordinator
// draws each round's clients with it from a generator seeded by the round's
// seed, so a simulation's local-only baseline can replay the same draws.
std::vector<std::string> SampleClients(std::span<const std::string> eligible, int64_t n, std::mt19937_64& gen);

// Strategy state <-> bytes (a safetensors file of its named vectors).
std::vector<uint8_t> SerializeStrategyState(const std::map<std::string, Eigen::VectorXf>& state);
absl::StatusOr<std::map<std::string, Eigen::VectorXf>> ParseStrategyState(std::span<const uint8_t> bytes);

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_ROUND_MACHINE_H_
