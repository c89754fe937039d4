#include "coordinator/privacy_ledger.h"

#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "secure_agg/dp_accountant.h"

namespace fedpers {

namespace {

// Epsilon at delta of RDP a rho at every order.
double EpsilonOfRho(double rho, std::span<const double> orders, double delta) {
  if (std::isinf(rho) || rho == 0) return rho;
  std::vector<double> rdp;
  for (double a : orders) rdp.push_back(a * rho);
  absl::StatusOr<dp::EpsilonAt> e = dp::EpsilonFromRdp(orders, rdp, delta);
  return e.ok() ? e->epsilon : std::numeric_limits<double>::infinity();
}

// A contributed round's rho against the coordinator: replace-one moves the
// sum by up to 2 S, so RDP a / (2 (z / 2)^2); nothing hides it when z = 0.
double RoundRho(double coordinator_z) {
  return coordinator_z > 0 ? 2 / (coordinator_z * coordinator_z) : std::numeric_limits<double>::infinity();
}

}  // namespace

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
// one is not silently continued (a build that predates a name refuses it).
constexpr char kAccounting[] =
    "fixed-size sampling without replacement, replace-one neighbours, each round's noise bound, rounds "
    "without "
    "noise charged";
// Before rounds without noise reached the ledger (they were skipped: such
// snapshots may miss them, PrivacyLedger::MayMissRoundsWithoutNoise).
constexpr char kAccountingBeforeRoundsWithoutNoise[] =
    "fixed-size sampling without replacement, replace-one neighbours, each round's noise bound";
// Before rounds recorded their noise, every round was charged with the
// Gaussian's bound (Theorems 9 and 27).
constexpr char kAccountingBeforeNoise[] = "fixed-size sampling without replacement, replace-one neighbours";

// A round's noise in snapshots.
constexpr char kGaussianNoise[] = "gaussian";
constexpr char kGaussianDominatedNoise[] = "gaussian-dominated";

// A snapshot's number (or "inf"), which must be >= 0; std::invalid_argument
// otherwise (FromJson reports it as DataLoss).
double NonNegative(const nlohmann::json& j, absl::string_view what) {
  const std::optional<double> value = EpsilonFromJson(j);
  if (!value.has_value() || !(*value >= 0)) {
    throw std::invalid_argument(absl::StrCat(what, " must be a number >= 0 or \"inf\", not ", j.dump()));
  }
  return *value;
}

std::vector<double> RdpFromJson(const nlohmann::json& j) {
  if (!j.is_array())
    throw std::invalid_argument(absl::StrCat("an RDP account must be an array, not ", j.dump()));
  std::vector<double> rdp;
  for (const nlohmann::json& value : j) rdp.push_back(NonNegative(value, "an RDP value"));
  return rdp;
}
}  // namespace

absl::StatusOr<std::vector<double>> PrivacyLedger::RoundRdp(double q, double z,
                                                            dp::SampledNoise noise) const {
  // A sum released without noise hides nobody it may hold, sampled or not.
  if (z == 0 && q > 0 && q <= 1)
    return std::vector<double>(orders_.size(), std::numeric_limits<double>::infinity());
  // Replacing one user's clipped update by another's moves the sum by up to
  // 2 S, so the noise is z / 2 replace-one sensitivities.
  return dp::ComputeRdpSampledWithoutReplacement(q, z / 2, noise, 1, orders_);
}

absl::Status PrivacyLedger::SetPolicy(double delta, double epsilon_budget,
                                      double epsilon_budget_against_coordinator) {
  absl::StatusOr<PrivacyLedger> checked = Create(delta, epsilon_budget, orders_);
  if (!checked.ok()) return checked.status();
  if (!(epsilon_budget_against_coordinator > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("epsilon budget against the coordinator ",
                                                   epsilon_budget_against_coordinator, " must be positive"));
  }
  delta_ = delta;
  budget_ = epsilon_budget;
  budget_against_coordinator_ = epsilon_budget_against_coordinator;
  epsilon_ = 0;
  for (const Account& a : accounts_) epsilon_ = std::max(epsilon_, EpsilonOf(a.rdp));
  return absl::OkStatus();
}

double PrivacyLedger::EpsilonOf(const std::vector<double>& rdp) const {
  absl::StatusOr<dp::EpsilonAt> e = dp::EpsilonFromRdp(orders_, rdp, delta_);
  return e.ok() ? e->epsilon : std::numeric_limits<double>::infinity();
}

absl::StatusOr<double> PrivacyLedger::ProjectedEpsilon(double q, double z, dp::SampledNoise noise,
                                                       std::span<const std::string> eligible) const {
  absl::StatusOr<std::vector<double>> round = RoundRdp(q, z, noise);
  if (!round.ok()) return round.status();
  std::vector<char> touched(accounts_.size(), 0);
  bool newcomers = false;
  for (const std::string& user : eligible) {
    auto it = user_account_.find(user);
    if (it == user_account_.end()) {
      newcomers = true;
    } else {
      touched[it->second] = 1;
    }
  }
  double worst = epsilon_;
  if (newcomers) worst = std::max(worst, EpsilonOf(*round));
  std::vector<double> rdp(orders_.size());
  for (size_t a = 0; a < accounts_.size(); ++a) {
    if (!touched[a]) continue;
    for (size_t i = 0; i < rdp.size(); ++i) rdp[i] = accounts_[a].rdp[i] + (*round)[i];
    worst = std::max(worst, EpsilonOf(rdp));
  }
  return worst;
}

absl::StatusOr<double> PrivacyLedger::EpsilonAfterRounds(double q, double z, dp::SampledNoise noise,
                                                         int64_t rounds) const {
  if (rounds < 0) return absl::InvalidArgumentError(absl::StrCat("rounds must be >= 0, got ", rounds));
  absl::StatusOr<std::vector<double>> round = RoundRdp(q, z, noise);
  if (!round.ok()) return round.status();
  std::vector<double> sum(orders_.size(), 0.0);
  for (int64_t r = 0; r < rounds; ++r) {
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += (*round)[i];
  }
  return rounds == 0 ? 0.0 : EpsilonOf(sum);
}

absl::Status PrivacyLedger::CheckCanOpen(int64_t round, double q, double z, dp::SampledNoise noise,
                                         double coordinator_z, std::span<const std::string> eligible) const {
  absl::StatusOr<double> projected = ProjectedEpsilon(q, z, noise, eligible);
  if (!projected.ok()) return projected.status();
  if (*projected > budget_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "round %d refused: it would raise epsilon (delta %g) from %.4f to %.4f, over the budget %.4f", round, delta_,
        epsilon_, *projected, budget_));
  }
  if (std::isinf(budget_against_coordinator_)) return absl::OkStatus();
  if (!coordinator_rho_known_) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "round %d refused: the ledger was restored from a snapshot that did not record contributions, so the "
        "epsilon against the coordinator is unknown and its budget %.4f cannot be checked",
        round, budget_against_coordinator_));
  }
  // Any eligible user may contribute: the worst is the one who has lost most.
  double worst_rho = 0;
  const std::string* worst = nullptr;
  for (const std::string& user : eligible) {
    if (auto it = coordinator_rho_.find(user); it != coordinator_rho_.end() && it->second >= worst_rho) {
      worst_rho = it->second;
      worst = &user;
    }
  }
  const double after = EpsilonOfRho(worst_rho + RoundRho(coordinator_z), orders_, delta_);
  if (after > budget_against_coordinator_) {
    return absl::FailedPreconditionError(
        absl::StrFormat("round %d refused: it would raise the epsilon against the coordinator (delta %g) of "
                        "eligible user%s from "
                        "%.4f to %.4f, over the budget %.4f",
                        round, delta_, worst ? absl::StrCat(" '", *worst, "'") : "s",
                        EpsilonOfRho(worst_rho, orders_, delta_), after, budget_against_coordinator_));
  }
  return absl::OkStatus();
}

absl::Status PrivacyLedger::RecordExposure(std::span<const std::string> users, double coordinator_z) {
  if (!(coordinator_z >= 0) || !std::isfinite(coordinator_z)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the coordinator-facing noise multiplier ", coordinator_z, " must be finite and >= 0"));
  }
  const double round_rho = RoundRho(coordinator_z);
  for (const std::string& user : std::set<std::string>(users.begin(), users.end())) {
    double& rho = coordinator_rho_[user];
    rho += round_rho;
    max_coordinator_rho_ = std::max(max_coordinator_rho_, rho);
  }
  return absl::OkStatus();
}

void PrivacyLedger::ChargeUnrecordedRoundWithoutNoise(std::span<const std::string> eligible,
                                                      std::span<const std::string> seen) {
  const double inf = std::numeric_limits<double>::infinity();
  const size_t spent = accounts_.size();
  accounts_.push_back({std::vector<double>(orders_.size(), inf), 0});
  for (const std::string& user : std::set<std::string>(eligible.begin(), eligible.end())) {
    auto [it, added] = user_account_.emplace(user, spent);
    if (!added) {
      --accounts_[it->second].users;
      it->second = spent;
    }
    ++accounts_[spent].users;
  }
  for (const std::string& user : seen) coordinator_rho_[user] = inf;
  if (!seen.empty()) max_coordinator_rho_ = inf;
  epsilon_ = inf;
  Compact();
}

absl::Status PrivacyLedger::RecordRound(int64_t round, double q, double z, dp::SampledNoise noise,
                                        double coordinator_z, std::span<const std::string> contributors,
                                        std::span<const std::string> eligible) {
  if (!rounds_.empty() && round <= rounds_.back().round) {
    return absl::InvalidArgumentError(absl::StrCat("round ", round, " recorded after round ", rounds_.back().round));
  }
  if (!(coordinator_z >= 0) || !std::isfinite(coordinator_z)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the coordinator-facing noise multiplier ", coordinator_z, " must be finite and >= 0"));
  }
  {
    std::set<absl::string_view> seen;
    for (const std::string& user : eligible) {
      if (!seen.insert(user).second) {
        return absl::InvalidArgumentError(absl::StrCat("user '", user, "' is listed twice among the eligible"));
      }
    }
    std::set<absl::string_view> contributed;
    for (const std::string& user : contributors) {
      if (!seen.contains(user)) {
        return absl::InvalidArgumentError(absl::StrCat("contributor '", user, "' is not among the eligible"));
      }
      if (!contributed.insert(user).second) {
        return absl::InvalidArgumentError(absl::StrCat("contributor '", user, "' is listed twice"));
      }
    }
  }
  const int64_t participants = static_cast<int64_t>(contributors.size());
  if (absl::Status s = CheckCanOpen(round, q, z, noise, coordinator_z, eligible); !s.ok()) return s;
  absl::StatusOr<std::vector<double>> rdp = RoundRdp(q, z, noise);
  if (!rdp.ok()) return rdp.status();

  // Each account's eligible users move together: the account itself
  // advances when all of its users were eligible; otherwise they split off
  // into a copy that advances. Newcomers start one account from zero.
  const size_t before = accounts_.size();
  std::vector<int64_t> eligible_in(before, 0);
  int64_t newcomers = 0;
  for (const std::string& user : eligible) {
    auto it = user_account_.find(user);
    if (it == user_account_.end()) {
      ++newcomers;
    } else {
      ++eligible_in[it->second];
    }
  }
  std::vector<size_t> target(before);
  for (size_t a = 0; a < before; ++a) {
    target[a] = a;
    if (eligible_in[a] == 0 || eligible_in[a] == accounts_[a].users) continue;
    accounts_[a].users -= eligible_in[a];
    accounts_.push_back({accounts_[a].rdp, eligible_in[a]});
    target[a] = accounts_.size() - 1;
  }
  const size_t newcomer_account = accounts_.size();
  if (newcomers > 0) accounts_.push_back({std::vector<double>(orders_.size(), 0.0), newcomers});
  for (size_t a = 0; a < before; ++a) {
    if (eligible_in[a] == 0) continue;
    std::vector<double>& acc = accounts_[target[a]].rdp;
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += (*rdp)[i];
  }
  if (newcomers > 0) {
    std::vector<double>& acc = accounts_[newcomer_account].rdp;
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += (*rdp)[i];
  }
  if (accounts_.size() != before) {
    for (const std::string& user : eligible) {
      auto it = user_account_.find(user);
      if (it == user_account_.end()) {
        user_account_.emplace(user, newcomer_account);
      } else {
        it->second = target[it->second];
      }
    }
    Compact();
  } else {
    for (const Account& a : accounts_) epsilon_ = std::max(epsilon_, EpsilonOf(a.rdp));
  }
  const double round_rho = RoundRho(coordinator_z);
  for (const std::string& user : contributors) {
    double& rho = coordinator_rho_[user];
    rho += round_rho;
    max_coordinator_rho_ = std::max(max_coordinator_rho_, rho);
  }
  rounds_.push_back(
      {round, q, z, coordinator_z, noise, participants, static_cast<int64_t>(eligible.size()), epsilon_});
  return absl::OkStatus();
}

nlohmann::json EpsilonToJson(std::optional<double> epsilon) {
  if (!epsilon.has_value()) return nullptr;
  if (std::isinf(*epsilon)) return "inf";
  return *epsilon;
}

std::optional<double> EpsilonFromJson(const nlohmann::json& j) {
  if (j.is_null()) return std::nullopt;
  if (j.is_number()) return j.get<double>();
  if (j.is_string() && j.get<std::string>() == "inf") return std::numeric_limits<double>::infinity();
  throw std::invalid_argument(absl::StrCat("an epsilon must be a number, \"inf\" or null, not ", j.dump()));
}

absl::StatusOr<double> BudgetFromJson(const nlohmann::json& value, absl::string_view key) {
  if (value.is_number()) return value.get<double>();
  if (value.is_string() && value.get<std::string>() == "inf") return std::numeric_limits<double>::infinity();
  return absl::InvalidArgumentError(
      absl::StrCat("\"", key, "\" must be a number or \"inf\", not ", value.dump()));
}

std::optional<double> PrivacyLedger::epsilon_against_coordinator() const {
  if (!coordinator_rho_known_) return std::nullopt;
  return EpsilonOfRho(max_coordinator_rho_, orders_, delta_);
}

std::optional<double> PrivacyLedger::UserEpsilonAgainstCoordinator(const std::string& user) const {
  if (!coordinator_rho_known_) return std::nullopt;
  auto it = coordinator_rho_.find(user);
  return it == coordinator_rho_.end() ? 0.0 : EpsilonOfRho(it->second, orders_, delta_);
}

void PrivacyLedger::Compact() {
  std::map<std::vector<double>, size_t> index;
  std::vector<Account> merged;
  std::vector<size_t> remap(accounts_.size());
  bool renumbered = false;
  for (size_t a = 0; a < accounts_.size(); ++a) {
    if (accounts_[a].users == 0) {
      renumbered = true;
      continue;
    }
    auto [it, inserted] = index.emplace(accounts_[a].rdp, merged.size());
    if (inserted) {
      merged.push_back(std::move(accounts_[a]));
    } else {
      merged[it->second].users += accounts_[a].users;
    }
    remap[a] = it->second;
    renumbered = renumbered || remap[a] != a;
  }
  accounts_ = std::move(merged);
  if (renumbered) {
    for (auto& [user, a] : user_account_) a = remap[a];
  }
  for (const Account& a : accounts_) epsilon_ = std::max(epsilon_, EpsilonOf(a.rdp));
}

absl::StatusOr<double> PrivacyLedger::UserEpsilon(const std::string& user) const {
  auto it = user_account_.find(user);
  if (it == user_account_.end()) return 0.0;
  return EpsilonOf(accounts_[it->second].rdp);
}

std::string PrivacyLedger::ToJson() const {
  nlohmann::json j;
  j["delta"] = delta_;
  j["budget"] = std::isinf(budget_) ? nlohmann::json("inf") : nlohmann::json(budget_);
  j["accounting"] = kAccounting;
  j["orders"] = orders_;
  j["accounts"] = nlohmann::json::array();
  for (const Account& a : accounts_) {
    nlohmann::json rdp = nlohmann::json::array();
    for (double value : a.rdp) rdp.push_back(EpsilonToJson(value));  // infinite after a round without noise
    j["accounts"].push_back(std::move(rdp));
  }
  j["users"] = user_account_;
  if (coordinator_rho_known_) {
    nlohmann::json rho = nlohmann::json::object();
    for (const auto& [user, value] : coordinator_rho_) {
      rho[user] = std::isinf(value) ? nlohmann::json("inf") : nlohmann::json(value);
    }
    j["coordinator_rho"] = std::move(rho);
  } else {
    j["coordinator_rho"] = nullptr;
  }
  j["rounds"] = nlohmann::json::array();
  for (const LedgerRound& r : rounds_) {
    j["rounds"].push_back(
        {{"round", r.round},
         {"q", r.sampling_rate},
         {"z", r.noise_multiplier},
         {"coordinator_z", r.coordinator_noise_multiplier},
         {"noise", r.noise == dp::SampledNoise::kGaussian ? kGaussianNoise : kGaussianDominatedNoise},
         {"participants", r.participants},
         {"eligible", r.eligible_users},
         {"epsilon_after", EpsilonToJson(r.epsilon_after)}});
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
    const size_t n_orders = l->orders_.size();
    if (j.contains("accounts")) {
      for (const auto& a : j.at("accounts")) {
        l->accounts_.push_back({RdpFromJson(a), 0});
        if (l->accounts_.back().rdp.size() != n_orders) {
          return absl::DataLossError(absl::StrCat("ledger account ", l->accounts_.size() - 1, " has the wrong length"));
        }
      }
      for (const auto& [user, a] : j.at("users").items()) {
        const int64_t index = a.is_number_integer() ? a.get<int64_t>() : -1;
        if (index < 0 || index >= static_cast<int64_t>(l->accounts_.size())) {
          return absl::DataLossError(absl::StrCat("ledger entry of user '", user, "' names account ", index, " of ",
                                                  l->accounts_.size()));
        }
        l->user_account_.emplace(user, static_cast<size_t>(index));
        ++l->accounts_[static_cast<size_t>(index)].users;
      }
    } else {
      // One RDP vector per user, as written before accounts.
      for (const auto& [user, a] : j.at("users").items()) {
        std::vector<double> rdp = RdpFromJson(a);
        if (rdp.size() != n_orders) return absl::DataLossError(absl::StrCat("ledger entry of user '", user, "' has the wrong length"));
        l->user_account_.emplace(user, l->accounts_.size());
        l->accounts_.push_back({std::move(rdp), 1});
      }
    }
    const std::string accounting = j.value("accounting", std::string());
    if (!accounting.empty() && accounting != kAccounting &&
        accounting != kAccountingBeforeRoundsWithoutNoise && accounting != kAccountingBeforeNoise) {
      return absl::DataLossError(absl::StrCat(
          "privacy ledger snapshot uses accounting '", accounting, "', this build knows '", kAccounting,
          "', '", kAccountingBeforeRoundsWithoutNoise, "' and '", kAccountingBeforeNoise, "'"));
    }
    // Only snapshots under the last two accountings record each round's noise.
    const bool noise_recorded =
        accounting == kAccounting || accounting == kAccountingBeforeRoundsWithoutNoise;
    l->may_miss_rounds_without_noise_ = accounting != kAccounting;
    for (const auto& r : j.at("rounds")) {
      dp::SampledNoise noise = dp::SampledNoise::kGaussianDominated;
      if (noise_recorded) {
        const std::string name = r.at("noise").get<std::string>();
        if (name != kGaussianNoise && name != kGaussianDominatedNoise) {
          return absl::DataLossError(absl::StrCat("ledger round ", r.at("round").dump(),
                                                  " names unknown noise '", name, "' (this build knows '",
                                                  kGaussianNoise, "' and '", kGaussianDominatedNoise, "')"));
        }
        noise = name == kGaussianNoise ? dp::SampledNoise::kGaussian : dp::SampledNoise::kGaussianDominated;
      }
      // 0 (nothing hides a contributor) where older snapshots did not say.
      const double coordinator_z = noise_recorded ? r.at("coordinator_z").get<double>() : 0.0;
      if (!(coordinator_z >= 0)) {
        return absl::DataLossError(
            absl::StrCat("ledger round ", r.at("round").dump(), " has coordinator_z ", coordinator_z));
      }
      l->rounds_.push_back({r.at("round").get<int64_t>(), r.at("q").get<double>(), r.at("z").get<double>(),
                            coordinator_z, noise, r.at("participants").get<int64_t>(),
                            r.at("eligible").get<int64_t>(),
                            NonNegative(r.at("epsilon_after"), "an epsilon")});
    }
    // Contributions against the coordinator: only the current accounting
    // keeps them (null: a ledger that had already lost them).
    l->coordinator_rho_known_ = noise_recorded && !j.at("coordinator_rho").is_null();
    if (l->coordinator_rho_known_) {
      for (const auto& [user, value] : j.at("coordinator_rho").items()) {
        const std::optional<double> parsed = EpsilonFromJson(value);  // the same number-or-"inf" encoding
        const double rho = parsed.value_or(-1);
        if (!(rho >= 0))
          return absl::DataLossError(absl::StrCat("ledger entry of user '", user, "' has rho ", rho));
        l->coordinator_rho_.emplace(user, rho);
        l->max_coordinator_rho_ = std::max(l->max_coordinator_rho_, rho);
      }
    }
    // Rounds stored without their noise are charged again with the bound that
    // holds for either noise, dp::SampledNoise::kGaussianDominated. The
    // snapshot does not say who was eligible in which round, so every stored
    // user is charged every such round: an upper bound.
    auto recharge = [&](bool from_zero) -> absl::Status {
      std::vector<double> extra(n_orders, 0.0);
      for (const LedgerRound& r : l->rounds_) {
        absl::StatusOr<std::vector<double>> rdp = l->RoundRdp(r.sampling_rate, r.noise_multiplier, r.noise);
        if (!rdp.ok())
          return absl::DataLossError(absl::StrCat("ledger round ", r.round, ": ", rdp.status().message()));
        absl::StatusOr<std::vector<double>> charged =
            from_zero ? std::vector<double>(n_orders, 0.0)
                      : l->RoundRdp(r.sampling_rate, r.noise_multiplier, dp::SampledNoise::kGaussian);
        if (!charged.ok())
          return absl::DataLossError(
              absl::StrCat("ledger round ", r.round, ": ", charged.status().message()));
        for (size_t i = 0; i < n_orders; ++i) {
          // inf - inf is NaN: a round without noise stays infinite.
          extra[i] += std::isinf((*rdp)[i]) ? (*rdp)[i] : std::max(0.0, (*rdp)[i] - (*charged)[i]);
        }
      }
      for (Account& a : l->accounts_) {
        if (from_zero) a.rdp.assign(n_orders, 0.0);
        for (size_t i = 0; i < n_orders; ++i) a.rdp[i] += extra[i];
      }
      return absl::OkStatus();
    };
    if (accounting.empty()) {
      // Written when the ledger accounted Poisson sampling: its per-user sums
      // undercount, and are replaced.
      if (absl::Status s = recharge(/*from_zero=*/true); !s.ok()) return s;
    } else if (!noise_recorded) {
      // Charged with the Gaussian's bound: add what the other bound costs more.
      if (absl::Status s = recharge(/*from_zero=*/false); !s.ok()) return s;
    }
    l->Compact();
    return l;
  } catch (const std::exception& e) {  // nlohmann's, or EpsilonFromJson's invalid_argument
    return absl::DataLossError(absl::StrCat("privacy ledger snapshot is malformed: ", e.what()));
  }
}

}  // namespace fedpers
