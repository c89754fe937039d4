#include "coordinator/privacy_ledger.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "secure_agg/dp_accountant.h"

namespace fedpers {

absl::StatusOr<PrivacyLedger> PrivacyLedger::Create(double delta, double epsilon_budget, std::vector<double> orders) {
  if (!(delta > 0 && delta < 1)) return absl::InvalidArgumentError(absl::StrCat("delta = ", delta, " is outside (0, 1)"));
  if (!(epsilon_budget > 0)) return absl::InvalidArgumentError(absl::StrCat("epsilon budget ", epsilon_budget, " must be positive"));
  PrivacyLedger l;
  l.delta_ = delta;
  l.budget_ = epsilon_budget;
  l.orders_ = orders.empty() ? dp::DefaultOrders() : std::move(orders);
  for (double a : l.orders_) {
    if (!(a > 1)) return absl::InvalidArgumentError("RDP orders must exceed 1");
  }
  return l;
}

namespace {
// Names the accounting in snapshots, so that a ledger written under another
// one is not silently continued.
constexpr char kAccounting[] = "fixed-size sampling without replacement, replace-one neighbours";
}  // namespace

absl::StatusOr<std::vector<double>> PrivacyLedger::RoundRdp(double q, double z) const {
  // Replacing one user's clipped update by another's moves the sum by up to
  // 2 S, so the noise is z / 2 replace-one sensitivities.
  return dp::ComputeRdpSampledWithoutReplacement(q, z / 2, 1, orders_);
}

double PrivacyLedger::EpsilonOf(const std::vector<double>& rdp) const {
  absl::StatusOr<dp::EpsilonAt> e = dp::EpsilonFromRdp(orders_, rdp, delta_);
  return e.ok() ? e->epsilon : std::numeric_limits<double>::infinity();
}

absl::StatusOr<double> PrivacyLedger::ProjectedEpsilon(double q, double z, std::span<const std::string> eligible) const {
  absl::StatusOr<std::vector<double>> round = RoundRdp(q, z);
  if (!round.ok()) return round.status();
  double worst = epsilon_;
  std::vector<double> rdp(orders_.size());
  for (const std::string& user : eligible) {
    auto it = user_rdp_.find(user);
    for (size_t i = 0; i < rdp.size(); ++i) rdp[i] = (it == user_rdp_.end() ? 0 : it->second[i]) + (*round)[i];
    worst = std::max(worst, EpsilonOf(rdp));
  }
  return worst;
}

absl::Status PrivacyLedger::CheckCanOpen(int64_t round, double q, double z, std::span<const std::string> eligible) const {
  absl::StatusOr<double> projected = ProjectedEpsilon(q, z, eligible);
  if (!projected.ok()) return projected.status();
  if (*projected > budget_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "round %d refused: it would raise epsilon (delta %g) from %.4f to %.4f, over the budget %.4f", round, delta_,
        epsilon_, *projected, budget_));
  }
  return absl::OkStatus();
}

absl::Status PrivacyLedger::RecordRound(int64_t round, double q, double z, int64_t participants,
                                        std::span<const std::string> eligible) {
  if (!rounds_.empty() && round <= rounds_.back().round) {
    return absl::InvalidArgumentError(absl::StrCat("round ", round, " recorded after round ", rounds_.back().round));
  }
  if (participants < 0 || participants > static_cast<int64_t>(eligible.size())) {
    return absl::InvalidArgumentError("participants must be between 0 and the number of eligible users");
  }
  if (absl::Status s = CheckCanOpen(round, q, z, eligible); !s.ok()) return s;
  absl::StatusOr<std::vector<double>> rdp = RoundRdp(q, z);
  if (!rdp.ok()) return rdp.status();
  for (const std::string& user : eligible) {
    std::vector<double>& acc = user_rdp_[user];
    acc.resize(orders_.size(), 0);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += (*rdp)[i];
    epsilon_ = std::max(epsilon_, EpsilonOf(acc));
  }
  rounds_.push_back({round, q, z, participants, static_cast<int64_t>(eligible.size()), epsilon_});
  return absl::OkStatus();
}

absl::StatusOr<double> PrivacyLedger::UserEpsilon(const std::string& user) const {
  auto it = user_rdp_.find(user);
  if (it == user_rdp_.end()) return 0.0;
  return EpsilonOf(it->second);
}

std::string PrivacyLedger::ToJson() const {
  nlohmann::json j;
  j["delta"] = delta_;
  j["budget"] = std::isinf(budget_) ? nlohmann::json("inf") : nlohmann::json(budget_);
  j["accounting"] = kAccounting;
  j["orders"] = orders_;
  j["users"] = user_rdp_;
  j["rounds"] = nlohmann::json::array();
  for (const LedgerRound& r : rounds_) {
    j["rounds"].push_back({{"round", r.round}, {"q", r.sampling_rate}, {"z", r.noise_multiplier},
                           {"participants", r.participants}, {"eligible", r.eligible_users},
                           {"epsilon_after", r.epsilon_after}});
  }
  return j.dump();
}

absl::StatusOr<PrivacyLedger> PrivacyLedger::FromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("privacy ledger snapshot is not a JSON object");
  try {
    const double budget = j.at("budget").is_string() ? std::numeric_limits<double>::infinity() : j.at("budget").get<double>();
    absl::StatusOr<PrivacyLedger> l = Create(j.at("delta").get<double>(), budget, j.at("orders").get<std::vector<double>>());
    if (!l.ok()) return l.status();
    l->user_rdp_ = j.at("users").get<std::map<std::string, std::vector<double>>>();
    for (auto& [user, rdp] : l->user_rdp_) {
      if (rdp.size() != l->orders_.size()) return absl::DataLossError(absl::StrCat("ledger entry of user '", user, "' has the wrong length"));
    }
    for (const auto& r : j.at("rounds")) {
      l->rounds_.push_back({r.at("round").get<int64_t>(), r.at("q").get<double>(), r.at("z").get<double>(),
                            r.at("participants").get<int64_t>(), r.at("eligible").get<int64_t>(),
                            r.at("epsilon_after").get<double>()});
    }
    const std::string accounting = j.value("accounting", std::string());
    if (accounting.empty()) {
      // Written when the ledger accounted Poisson sampling: its per-user sums
      // undercount. Without the per-round eligibility, charge every stored
      // user every stored round under the current accounting, an upper bound
      // on what their eligible rounds cost.
      std::vector<double> all(l->orders_.size(), 0.0);
      for (const LedgerRound& r : l->rounds_) {
        absl::StatusOr<std::vector<double>> rdp = l->RoundRdp(r.sampling_rate, r.noise_multiplier);
        if (!rdp.ok()) return absl::DataLossError(absl::StrCat("ledger round ", r.round, ": ", rdp.status().message()));
        for (size_t i = 0; i < all.size(); ++i) all[i] += (*rdp)[i];
      }
      for (auto& [user, rdp] : l->user_rdp_) rdp = all;
    } else if (accounting != kAccounting) {
      return absl::DataLossError(absl::StrCat("privacy ledger snapshot uses accounting '", accounting,
                                              "', this build knows '", kAccounting, "'"));
    }
    for (const auto& [user, rdp] : l->user_rdp_) l->epsilon_ = std::max(l->epsilon_, l->EpsilonOf(rdp));
    return l;
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat("privacy ledger snapshot is malformed: ", e.what()));
  }
}

}  // namespace fedpers
