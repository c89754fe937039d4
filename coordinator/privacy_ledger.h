// The privacy ledger: what every committed round cost, per round and per
// user, against an operator-set budget.
//
// Each round records its sampling rate q, noise multiplier z, participants,
// and the users who could have been sampled ("eligible"). The coordinator
// samples a fixed number of the eligible users without replacement, so a
// round is accounted as dp::SampledWithoutReplacementRdp under replace-one
// neighbours (one user's data replaced by another's; the number of users is
// public): the sensitivity of a sum of updates clipped to S is 2 S, and the
// round's RDP is that of multiplier z / 2, with the bound its noise allows
// (dp::SampledNoise: a continuous Gaussian added by the coordinator, or the
// clients' discrete shares, charged as a Gaussian that dominates them). A
// user's RDP grows
// only in rounds where they were eligible; their epsilon at delta follows
// from their own RDP sum. The ledger's epsilon is the largest user epsilon.
// The coordinator asks CheckCanOpen before opening a round and refuses it
// when some eligible user would exceed the budget. Not thread-safe.
//
// Users who were eligible in the same rounds share one RDP account (their
// sums are the same additions in the same order, so sharing is exact). A
// round then costs one update per account touched, and a snapshot one
// account index per user, not one RDP vector per user: with every user
// eligible in every round, memory, time and snapshot grow by a user id.
//
// The amplification by sampling holds against whoever sees the released
// rounds but not the sample. The coordinator draws the sample, so the ledger
// also keeps, per user who contributed to a round, the unamplified loss
// against the coordinator: the Gaussian's RDP at each contributed round's
// coordinator-facing multiplier, a rho with RDP(a) = a rho at every order
// (infinite once a round's noise did not hide the user from the coordinator).
#ifndef FEDPERS_COORDINATOR_PRIVACY_LEDGER_H_
#define FEDPERS_COORDINATOR_PRIVACY_LEDGER_H_

#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"
#include "secure_agg/dp_accountant.h"

namespace fedpers {

struct LedgerRound {
  int64_t round = 0;
  double sampling_rate = 0;      // q
  double noise_multiplier = 0;   // z as charged (ChargedNoiseMultiplier of the round's ring and noise)
  double coordinator_noise_multiplier = 0;  // what hides a contributor from the coordinator (0: nothing)
  dp::SampledNoise noise = dp::SampledNoise::kGaussianDominated;  // the bound that holds for either
  int64_t participants = 0;
  int64_t eligible_users = 0;
  double epsilon_after = 0;      // ledger epsilon once this round committed
};

// JSON has no infinity: an epsilon as a number, "inf", or null when unknown.
nlohmann::json EpsilonToJson(std::optional<double> epsilon);
// The inverse; std::invalid_argument for anything else.
std::optional<double> EpsilonFromJson(const nlohmann::json& j);
// A budget as configs give it: a number, or "inf" (none). InvalidArgument
// naming `key` for anything else (the range is the config's to check).
absl::StatusOr<double> BudgetFromJson(const nlohmann::json& value, absl::string_view key);

class PrivacyLedger {
 public:
  // delta in (0, 1), budget > 0 (infinity: no limit). Orders default to
  // TF-Privacy's list.
  static absl::StatusOr<PrivacyLedger> Create(double delta, double epsilon_budget,
                                              std::vector<double> orders = {});

  // The epsilon of a user eligible in `rounds` rounds of (q, z, noise) who
  // was never eligible before: what RecordRound gives such a user (the same
  // sums, added in the same order). InvalidArgument for bad parameters.
  absl::StatusOr<double> EpsilonAfterRounds(double q, double z, dp::SampledNoise noise, int64_t rounds) const;
  // Ledger epsilon if a round with (q, z, noise) over `eligible` ran now.
  absl::StatusOr<double> ProjectedEpsilon(double q, double z, dp::SampledNoise noise,
                                          std::span<const std::string> eligible) const;
  // OK, or FailedPrecondition naming the round, the projected epsilon and
  // the budget it would exceed: the ledger's, or the one against the
  // coordinator (when finite), where any eligible user may contribute with
  // `coordinator_z` (RecordRound's meaning). A ledger that does not know
  // its users' epsilon against the coordinator refuses under a finite budget.
  absl::Status CheckCanOpen(int64_t round, double q, double z, dp::SampledNoise noise, double coordinator_z,
                            std::span<const std::string> eligible) const;
  // Records a committed round (rounds strictly increasing). `contributors`
  // are the users whose updates are in the released sum (each eligible);
  // `coordinator_z` is the noise multiplier that hides one of them from the
  // coordinator, which knows the sample: the round's z when the clients
  // noise a SecAgg+ sum, one client's share when it sees each update, 0 when
  // it adds the noise itself. Refuses, changing nothing, a round that
  // CheckCanOpen refuses (either budget).
  absl::Status RecordRound(int64_t round, double q, double z, dp::SampledNoise noise, double coordinator_z,
                           std::span<const std::string> contributors, std::span<const std::string> eligible);

  // Applies the operator's current delta and budgets (the snapshot keeps
  // the delta and ledger budget of its time; the budget against the
  // coordinator is not kept: infinite until set). Epsilons are recomputed at
  // `delta` from the stored RDP sums, which do not depend on it, so the
  // change is exact; rounds already recorded keep the epsilon_after they
  // were reported with. A budget below the current epsilon is allowed: it
  // refuses every further round. InvalidArgument, changing nothing, for
  // a delta outside (0, 1) or a budget that is not positive.
  absl::Status SetPolicy(double delta, double epsilon_budget, double epsilon_budget_against_coordinator);

  // Charges `users` against the coordinator for a round that released
  // nothing but let the coordinator see them (an aborted plain round's
  // inputs, an unmasked sum that did not commit), at `coordinator_z`
  // (0: nothing hid them). The ledger's own epsilon does not move: nothing
  // was published. Never refused for the budget (the loss has happened);
  // InvalidArgument for a negative or non-finite multiplier.
  absl::Status RecordExposure(std::span<const std::string> users, double coordinator_z);

  // True when restored from a snapshot whose builds did not record rounds
  // without noise (they skipped the ledger there): the caller charges those
  // rounds from its own records (ChargeUnrecordedRoundWithoutNoise).
  bool MayMissRoundsWithoutNoise() const { return may_miss_rounds_without_noise_; }
  // Charges a committed round without noise that the snapshot did not
  // record: `eligible` (an upper bound will do) get an infinite epsilon, and
  // `seen` (whose inputs the coordinator saw) an infinite one against the
  // coordinator; the ledger's epsilon becomes infinite. Never refused (the
  // release has happened).
  void ChargeUnrecordedRoundWithoutNoise(std::span<const std::string> eligible,
                                         std::span<const std::string> seen);

  double epsilon() const { return epsilon_; }
  // The largest user epsilon against the coordinator (no amplification, over
  // the rounds the user contributed to): infinite when some contributor was
  // not hidden from it; nullopt when the ledger was restored from a snapshot
  // that did not record contributions.
  std::optional<double> epsilon_against_coordinator() const;
  std::optional<double> UserEpsilonAgainstCoordinator(const std::string& user) const;
  double delta() const { return delta_; }
  double budget() const { return budget_; }
  double budget_against_coordinator() const { return budget_against_coordinator_; }
  // A user's epsilon so far (0 for a user never eligible).
  absl::StatusOr<double> UserEpsilon(const std::string& user) const;
  const std::vector<LedgerRound>& rounds() const { return rounds_; }
  size_t num_users() const { return user_account_.size(); }
  // Distinct eligibility histories (1 while every user was eligible in every
  // round since they first were).
  size_t num_accounts() const { return accounts_.size(); }

  // JSON snapshot, and restore from it (validated). The snapshot names its
  // accounting; one naming an accounting this build does not know is
  // DataLoss (so a build that predates the current one refuses its
  // snapshots rather than charging less). Two older ones are charged again,
  // every stored user for every stored round since the snapshot does not
  // say who was eligible when (an upper bound on what their eligible rounds
  // cost), with dp::SampledNoise::kGaussianDominated, the bound that holds
  // whatever noise those rounds added:
  // - none named (Poisson sampling, which undercounts fixed-size sampling):
  //   the stored sums are replaced;
  // - fixed-size sampling before rounds recorded their noise (every round
  //   charged with the Gaussian's bound): the difference is added.
  // Snapshots with one RDP vector per user (before accounts) restore to the
  // same epsilons. Snapshots under any earlier accounting may miss rounds
  // without noise (MayMissRoundsWithoutNoise).
  std::string ToJson() const;
  static absl::StatusOr<PrivacyLedger> FromJson(const std::string& json);

 private:
  struct Account {
    std::vector<double> rdp;  // one sum per order
    int64_t users = 0;        // > 0
  };

  absl::StatusOr<std::vector<double>> RoundRdp(double q, double z, dp::SampledNoise noise) const;
  double EpsilonOf(const std::vector<double>& rdp) const;
  // Merges accounts with equal sums and renumbers the users' indices; the
  // ledger epsilon is recomputed.
  void Compact();

  double delta_ = 1e-5, budget_ = 1;
  double budget_against_coordinator_ = std::numeric_limits<double>::infinity();
  std::vector<double> orders_;
  std::vector<Account> accounts_;
  std::map<std::string, size_t> user_account_;  // user -> index in accounts_
  std::vector<LedgerRound> rounds_;
  double epsilon_ = 0;
  // Contributors' rho against the coordinator; users absent contributed to
  // no round. False after restoring a snapshot that did not keep it.
  std::map<std::string, double> coordinator_rho_;
  double max_coordinator_rho_ = 0;
  bool coordinator_rho_known_ = true;
  bool may_miss_rounds_without_noise_ = false;
};

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_PRIVACY_LEDGER_H_
