#include "coordinator/round_machine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/portable_prg.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"
#include "secure_agg/dp_accountant.h"
#include "secure_agg/ring_encoding.h"
#include "secure_agg/secagg_common.h"

namespace fedpers {
namespace {

using fedpers::v1::SecAggClientMessage;
using fedpers::v1::SecAggParams;

absl::StatusOr<secagg::RingConfig> FinestRing(int bits, double clip_norm, int64_t n, const dp::DistributedDpConfig& dp) {
  secagg::RingConfig ring;
  ring.bits = bits;
  ring.clip_norm = clip_norm;
  ring.max_summands = n;
  ring.scale = 1;
  if (absl::Status s = dp::ValidateRingForNoise(ring, dp); !s.ok()) return s;
  while (true) {
    secagg::RingConfig next = ring;
    next.scale *= 2;
    if (!dp::ValidateRingForNoise(next, dp).ok() || next.scale > 1e9 || dp.ClientSigma(next) > 1e5) break;
    ring = next;
  }
  return ring;
}

}  // namespace

absl::Status RoundSettings::Validate() const {
  if (clients_per_round < 2 || clients_per_round > kMaxClientsPerRound) {
    return absl::InvalidArgumentError(
        absl::StrCat("clients_per_round must be 2 to ", kMaxClientsPerRound, ", got ", clients_per_round));
  }
  if (min_clients < 2 || min_clients > clients_per_round) {
    return absl::InvalidArgumentError("min_clients must be in [2, clients_per_round]");
  }
  if (threshold == 1 || threshold > clients_per_round) {
    return absl::InvalidArgumentError("threshold must be 0 (derived) or in [2, clients_per_round]");
  }
  if (ring_bits != 0 && (ring_bits < 8 || ring_bits > 32)) {
    return absl::InvalidArgumentError("ring_bits must be 0 (sized per round) or in [8, 32]");
  }
  if (!(clip_norm >= kMinClipNorm && clip_norm <= kMaxClipNorm)) {
    return absl::InvalidArgumentError(
        absl::StrCat("clip_norm must be in [", kMinClipNorm, ", ", kMaxClipNorm, "], got ", clip_norm));
  }
  if (!(noise_multiplier >= 0) || !std::isfinite(noise_multiplier)) {
    return absl::InvalidArgumentError("noise_multiplier must be >= 0 and finite");
  }
  if (!(delta > 0 && delta < 1)) return absl::InvalidArgumentError("delta must be in (0, 1)");
  if (!(epsilon_budget > 0)) return absl::InvalidArgumentError("epsilon_budget must be positive");
  if (!(epsilon_budget_against_coordinator > 0)) {
    return absl::InvalidArgumentError("epsilon_budget_against_coordinator must be positive");
  }
  if (std::isfinite(epsilon_budget) && noise_multiplier == 0) {
    return absl::InvalidArgumentError(
        "epsilon_budget needs noise (noise_multiplier > 0): a round without noise has an infinite epsilon");
  }
  if (std::isfinite(epsilon_budget_against_coordinator) && (noise_multiplier == 0 || central_noise)) {
    return absl::InvalidArgumentError(
        "epsilon_budget_against_coordinator needs noise the clients add (noise_multiplier > 0, central_noise "
        "false): otherwise nothing hides a user's update from the coordinator");
  }
  return strategy.Validate();
}

absl::StatusOr<secagg::RingConfig> ChooseRing(uint32_t ring_bits, double clip_norm, int64_t n, size_t m,
                                              const dp::DistributedDpConfig& dp) {
  if (ring_bits != 0) return FinestRing(static_cast<int>(ring_bits), clip_norm, n, dp);
  for (int bits = 8; bits < 32; ++bits) {
    absl::StatusOr<secagg::RingConfig> ring = FinestRing(bits, clip_norm, n, dp);
    if (!ring.ok()) continue;
    const double rounding =
        std::sqrt(static_cast<double>(m) / (4.0 * static_cast<double>(dp.min_clients))) / ring->scale;
    const bool precise = rounding <= clip_norm / 256;
    const bool noise_resolved = dp.noise_multiplier == 0 || dp.ClientSigma(*ring) >= 4;
    const bool cheap_in_epsilon = dp::AccountedNoiseMultiplier(1.0, *ring, m) >= 1.0 - 1.0 / 256;
    if (precise && noise_resolved && cheap_in_epsilon) return ring;
  }
  // None did: the finest scale any width reaches, in the fewest bits that
  // reach it (the noise cap, not the width, may be what limits the scale).
  absl::StatusOr<secagg::RingConfig> widest = FinestRing(32, clip_norm, n, dp);
  if (!widest.ok()) return widest.status();
  for (int bits = 8; bits < 32; ++bits) {
    absl::StatusOr<secagg::RingConfig> ring = FinestRing(bits, clip_norm, n, dp);
    if (ring.ok() && ring->scale >= widest->scale) return ring;
  }
  return widest;
}

uint64_t RoundSeed(uint64_t seed, int64_t round) { return Fnv1a64(absl::StrCat(seed, "/round/", round)); }

std::vector<std::string> SampleClients(std::span<const std::string> eligible, int64_t n, std::mt19937_64& gen) {
  std::vector<std::string> pool(eligible.begin(), eligible.end());
  std::shuffle(pool.begin(), pool.end(), gen);
  pool.resize(static_cast<size_t>(std::clamp<int64_t>(n, 0, static_cast<int64_t>(pool.size()))));
  std::sort(pool.begin(), pool.end());
  return pool;
}

std::vector<uint8_t> SerializeStrategyState(const std::map<std::string, Eigen::VectorXf>& state) {
  SafetensorsWriter w;
  for (const auto& [name, v] : state) {
    (void)w.AddFloat(name, {static_cast<int64_t>(v.size())}, std::span<const float>(v.data(), static_cast<size_t>(v.size())));
  }
  const std::string bytes = w.Serialize();
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

absl::StatusOr<std::map<std::string, Eigen::VectorXf>> ParseStrategyState(std::span<const uint8_t> bytes) {
  std::map<std::string, Eigen::VectorXf> out;
  if (bytes.empty()) return out;
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(std::string(bytes.begin(), bytes.end()));
  if (!f.ok()) return f.status();
  for (const std::string& name : f->names()) {
    absl::StatusOr<std::vector<float>> v = f->ReadAsFloat(name);
    if (!v.ok()) return v.status();
    out[name] = Eigen::Map<const Eigen::VectorXf>(v->data(), static_cast<Eigen::Index>(v->size()));
  }
  return out;
}

namespace {

// What a round of n sampled clients runs with.
struct RoundPlan {
  SecAggParams params;  // graph seed and nonce not set
  dp::DistributedDpConfig dp;
  secagg::RingConfig ring;
};

// SecAgg parameters: derived degree and threshold, or the complete graph
// with t = ceil(2n/3) for samples too small for the bounds. A plain round
// uses the count, the vector length and the ring, and the same minimum of
// contributors (max(t, min_clients)): the clients split the noise among as
// many, so both modes encode and sum the same values.
absl::StatusOr<RoundPlan> PlanRound(const RoundSettings& settings, int64_t n, size_t layout_size,
                                    uint64_t rotation_seed) {
  RoundPlan plan;
  SecAggParams& params = plan.params;
  params.set_num_clients(static_cast<uint32_t>(n));
  absl::StatusOr<secagg::DegreeAndThreshold> kt =
      secagg::ChooseDegreeAndThreshold(static_cast<uint32_t>(n), secagg::SecAggAssumptions{});
  uint32_t k = static_cast<uint32_t>(n - 1), t = static_cast<uint32_t>((2 * n + 2) / 3);
  if (kt.ok()) {
    k = kt->degree;
    t = kt->threshold;
  }
  if (settings.threshold > 0) t = settings.threshold;
  t = std::max<uint32_t>(t, static_cast<uint32_t>(std::min<int64_t>(settings.min_clients, n)));
  // Shares go to the k neighbours and the client itself, so t <= k + 1: a
  // threshold raised to min_clients (say 80 of 100, where the bounds give
  // k = 76) needs more neighbours, which only adds security.
  if (t > k + 1) k = std::min<uint32_t>(static_cast<uint32_t>(n - 1), (t - 1) % 2 == 0 ? t - 1 : t);  // even, or n - 1
  params.set_degree(k);
  params.set_threshold(t);
  const int64_t min_survivors = std::max<int64_t>(t, settings.min_clients);
  plan.dp.noise_multiplier = settings.central_noise ? 0 : settings.noise_multiplier;
  plan.dp.min_clients = min_survivors;
  plan.dp.rotate = settings.rotate;
  plan.dp.rotation_seed = rotation_seed;
  params.set_vector_length(dp::RotatedLength(layout_size, plan.dp));
  absl::StatusOr<secagg::RingConfig> ring =
      ChooseRing(settings.ring_bits, settings.clip_norm, n, static_cast<size_t>(params.vector_length()), plan.dp);
  if (!ring.ok()) return ring.status();
  plan.ring = *ring;
  params.set_ring_bits(static_cast<uint32_t>(plan.ring.bits));
  return plan;
}

}  // namespace

namespace {

// The coordinator's central noise is a continuous Gaussian; the clients'
// shares are discrete, charged at a multiplier whose Gaussian dominates
// them (ChargedNoiseMultiplier), which allows only part of the sampling bound.
dp::SampledNoise LedgerNoise(const RoundSettings& settings) {
  return settings.central_noise ? dp::SampledNoise::kGaussian : dp::SampledNoise::kGaussianDominated;
}

// What hides a contributor from the coordinator, which knows the sample: the
// whole noise of a SecAgg+ sum (`accounted_z`, as the ledger charges it); in
// a plain round only the client's own share, a discrete Gaussian with an
// integer shift (one share's bound); nothing when the coordinator adds the
// noise.
double CoordinatorNoiseMultiplier(const RoundSettings& settings, const secagg::RingConfig& ring,
                                  const dp::DistributedDpConfig& dp, size_t m, double accounted_z) {
  if (settings.central_noise || !(settings.noise_multiplier > 0)) return 0;
  if (settings.secure_aggregation) return accounted_z;
  return dp::AccountedNoiseMultiplier(settings.noise_multiplier, ring, m) /
         std::sqrt(static_cast<double>(dp.min_clients));
}

}  // namespace

absl::Status CheckRoundsCanOpen(const RoundSettings& settings, size_t layout_size) {
  if (absl::Status s = settings.Validate(); !s.ok()) return s;
  // A round samples between min_clients and clients_per_round clients; the
  // ring and the threshold are hardest to meet at the ends.
  for (int64_t n : {settings.min_clients, settings.clients_per_round}) {
    if (settings.threshold > n) {
      return absl::InvalidArgumentError(absl::StrCat("threshold ", settings.threshold, " exceeds a round of ", n,
                                                     " clients (min_clients)"));
    }
    absl::StatusOr<RoundPlan> plan = PlanRound(settings, n, layout_size, /*rotation_seed=*/0);
    absl::Status usable = plan.status();
    if (usable.ok() && settings.secure_aggregation) {
      SecAggParams params = plan->params;
      params.set_graph_seed(std::string(32, '\0'));  // Open draws a random one
      usable = secagg::ValidateParams(params);
    }
    if (!usable.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("no round of ", n, " clients can run with these settings: ", usable.message()));
    }
    // One round must fit the budget against the coordinator, or every round
    // would be refused: the same check Open makes, for a user who has
    // contributed nothing yet.
    if (std::isfinite(settings.epsilon_budget_against_coordinator)) {
      const size_t m = static_cast<size_t>(plan->params.vector_length());
      const double accounted_z = ChargedNoiseMultiplier(settings, plan->ring, plan->dp, m);
      absl::StatusOr<PrivacyLedger> probe =
          PrivacyLedger::Create(settings.delta, std::numeric_limits<double>::infinity());
      if (!probe.ok()) return probe.status();
      if (absl::Status s = probe->SetPolicy(settings.delta, std::numeric_limits<double>::infinity(),
                                            settings.epsilon_budget_against_coordinator);
          !s.ok()) {
        return s;
      }
      const std::string user = "a new user";
      if (absl::Status s =
              probe->CheckCanOpen(1, 1.0, accounted_z, LedgerNoise(settings),
                                  CoordinatorNoiseMultiplier(settings, plan->ring, plan->dp, m, accounted_z),
                                  std::span<const std::string>(&user, 1));
          !s.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("epsilon_budget_against_coordinator ", settings.epsilon_budget_against_coordinator,
                         " is below what one round of ", n, " clients costs against the coordinator (",
                         s.message(), "): raise it or the noise multiplier"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<double> ProjectedEpsilon(const RoundSettings& settings, size_t layout_size, int64_t eligible,
                                        int64_t rounds) {
  if (absl::Status s = settings.Validate(); !s.ok()) return s;
  if (eligible < settings.min_clients || rounds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a projection needs at least min_clients (", settings.min_clients,
                     ") eligible users and rounds >= 0, got ", eligible, " and ", rounds));
  }
  const int64_t n = std::min(settings.clients_per_round, eligible);
  absl::StatusOr<RoundPlan> plan = PlanRound(settings, n, layout_size, /*rotation_seed=*/0);
  if (!plan.ok()) return plan.status();
  const double z = ChargedNoiseMultiplier(settings, plan->ring, plan->dp,
                                          static_cast<size_t>(plan->params.vector_length()));
  absl::StatusOr<PrivacyLedger> ledger =
      PrivacyLedger::Create(settings.delta, std::numeric_limits<double>::infinity());
  if (!ledger.ok()) return ledger.status();
  // Every user is eligible in every round: the ledger's epsilon is one
  // user's, charged from the first round.
  return ledger->EpsilonAfterRounds(static_cast<double>(n) / static_cast<double>(eligible), z,
                                    LedgerNoise(settings), rounds);
}

absl::StatusOr<double> NoiseMultiplierForEpsilon(RoundSettings settings, size_t layout_size, int64_t eligible,
                                                 int64_t rounds, double target_epsilon) {
  if (!(target_epsilon > 0) || !std::isfinite(target_epsilon)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a target epsilon must be positive and finite, got ", target_epsilon));
  }
  if (rounds < 1)
    return absl::InvalidArgumentError(absl::StrCat("a target epsilon needs rounds >= 1, got ", rounds));
  auto epsilon_at = [&](double z) {
    settings.noise_multiplier = z;
    return ProjectedEpsilon(settings, layout_size, eligible, rounds);
  };
  // Epsilon falls as z grows: double z until the target holds, then bisect
  // between the last z that missed it (low; 0 at first) and the first that
  // met it (high).
  constexpr double kMaxNoiseMultiplier = 1e4;
  double low = 0, high = 0.125;
  while (true) {
    absl::StatusOr<double> epsilon = epsilon_at(high);
    if (!epsilon.ok()) {
      // More noise than the ring can carry (a fixed ring_bits): the target
      // must hold at the largest z that still plans, found between low and
      // high.
      const absl::Status unplannable = epsilon.status();
      if (low == 0 && !epsilon_at(1e-6).ok()) return unplannable;  // not the noise: nothing plans
      double fits = low > 0 ? low : 1e-6;
      for (double too_much = high; too_much - fits > 1e-3 * too_much;) {
        const double mid = 0.5 * (fits + too_much);
        (epsilon_at(mid).ok() ? fits : too_much) = mid;
      }
      absl::StatusOr<double> at_most = epsilon_at(fits);
      if (!at_most.ok()) return at_most.status();
      if (*at_most > target_epsilon) {
        return absl::InvalidArgumentError(
            absl::StrFormat("no noise multiplier the ring can carry keeps epsilon (delta %g) within %g over "
                            "%d rounds: at z %.4g "
                            "it is %.4g, and more noise fails (%s)",
                            settings.delta, target_epsilon, rounds, fits, *at_most, unplannable.message()));
      }
      high = fits;
      break;
    }
    if (*epsilon <= target_epsilon) break;
    if (high >= kMaxNoiseMultiplier) {
      return absl::InvalidArgumentError(
          absl::StrFormat("no noise multiplier up to %g keeps epsilon (delta %g) within %g over %d rounds",
                          kMaxNoiseMultiplier, settings.delta, target_epsilon, rounds));
    }
    low = high;
    high = std::min(2 * high, kMaxNoiseMultiplier);
  }
  while (high - low > 1e-3 * high) {
    const double mid = 0.5 * (low + high);
    absl::StatusOr<double> epsilon = epsilon_at(mid);
    if (!epsilon.ok()) return epsilon.status();
    (*epsilon <= target_epsilon ? high : low) = mid;
  }
  return high;
}

double ChargedNoiseMultiplier(const RoundSettings& settings, const secagg::RingConfig& ring,
                              const dp::DistributedDpConfig& dp, size_t m, double* tau) {
  double z = dp::AccountedNoiseMultiplier(settings.noise_multiplier, ring, m);
  double t = 0;
  if (!settings.central_noise && settings.noise_multiplier > 0) {
    // A committed sum carries at least dp.min_clients shares.
    t = dp::DistributedDiscreteGaussianTau(dp.min_clients, dp.ClientSigma(ring));
    z = dp::DistributedDiscreteAccountedMultiplier(z, dp.min_clients, dp.ClientSigma(ring), static_cast<int64_t>(m));
  }
  if (tau != nullptr) *tau = t;
  return z;
}

std::string DiscreteNoiseWarning(const RoundSettings& settings, size_t layout_size) {
  if (settings.central_noise || !(settings.noise_multiplier > 0)) return "";
  for (int64_t n : {settings.clients_per_round, settings.min_clients}) {
    absl::StatusOr<RoundPlan> plan = PlanRound(settings, n, layout_size, /*rotation_seed=*/0);
    if (!plan.ok()) continue;
    const size_t m = static_cast<size_t>(plan->params.vector_length());
    const double rounding_only = dp::AccountedNoiseMultiplier(settings.noise_multiplier, plan->ring, m);
    const double charged = ChargedNoiseMultiplier(settings, plan->ring, plan->dp, m);
    if (charged < 0.99 * rounding_only) {
      return absl::StrFormat(
          "a %d-bit ring leaves each of %d clients %.2g ring steps of noise: the discreteness of the noise makes "
          "the ledger charge noise multiplier %.3g instead of %.3g (%.2gx), so epsilon grows faster than z %g "
          "suggests (%s)",
          plan->ring.bits, n, plan->dp.ClientSigma(plan->ring), charged, rounding_only, charged / rounding_only,
          settings.noise_multiplier,
          settings.ring_bits != 0 ? "ring_bits 0 sizes the ring so that this costs nothing"
                                  : "no ring resolves this noise for so many clients: fewer clients per round or "
                                    "a larger z");
    }
  }
  return "";
}

absl::StatusOr<std::unique_ptr<RoundMachine>> RoundMachine::Create(StateStore* store, FlatLayout layout,
                                                                   RoundSettings settings) {
  if (absl::Status s = CheckRoundsCanOpen(settings, static_cast<size_t>(layout.total_size())); !s.ok()) return s;
  std::unique_ptr<RoundMachine> m(new RoundMachine());
  m->store_ = store;
  m->layout_ = std::move(layout);
  m->settings_ = settings;
  absl::StatusOr<std::unique_ptr<Strategy>> strategy = CreateStrategy(settings.strategy);
  if (!strategy.ok()) return strategy.status();
  m->strategy_ = std::move(*strategy);
  if (absl::StatusOr<int> r = store->RecoverOpenRounds(); !r.ok()) return r.status();
  absl::StatusOr<std::optional<CommittedState>> latest = store->LatestCommitted();
  if (!latest.ok()) return latest.status();
  m->global_ = Eigen::VectorXf::Zero(m->layout_.total_size());
  if (!settings.initial_global.empty()) {
    if (static_cast<int64_t>(settings.initial_global.size()) != m->layout_.total_size()) {
      return absl::InvalidArgumentError(absl::StrCat("initial global adapter has ", settings.initial_global.size(),
                                                     " values; the layout needs ", m->layout_.total_size()));
    }
    m->global_ = Eigen::Map<const Eigen::VectorXf>(settings.initial_global.data(), m->layout_.total_size());
  }
  absl::StatusOr<PrivacyLedger> ledger = PrivacyLedger::Create(settings.delta, settings.epsilon_budget);
  if (!ledger.ok()) return ledger.status();
  m->ledger_ = std::move(*ledger);
  if (latest->has_value()) {
    const CommittedState& c = **latest;
    // Which part of which round the operator has to look at.
    auto in_committed = [&c, store](absl::string_view part, const absl::Status& s) {
      return absl::Status(s.code(), absl::StrCat("state of committed round ", c.round, " in ", store->dir(),
                                                 ", ", part, ": ", s.message()));
    };
    absl::StatusOr<SafetensorsFile> f =
        SafetensorsFile::Parse(std::string(c.global_safetensors.begin(), c.global_safetensors.end()));
    if (!f.ok()) return in_committed("global adapter", f.status());
    absl::StatusOr<std::vector<float>> flat = m->layout_.FromSafetensors(*f);
    if (!flat.ok()) {
      return in_committed("global adapter", absl::FailedPreconditionError(absl::StrCat(
                                                "it does not fit this layout: ", flat.status().message())));
    }
    m->global_ = Eigen::Map<const Eigen::VectorXf>(flat->data(), static_cast<Eigen::Index>(flat->size()));
    absl::StatusOr<PrivacyLedger> restored = PrivacyLedger::FromJson(c.ledger_json);
    if (!restored.ok()) return in_committed("privacy ledger", restored.status());
    m->ledger_ = std::move(*restored);
    absl::StatusOr<std::map<std::string, Eigen::VectorXf>> state = ParseStrategyState(c.strategy_state);
    if (!state.ok()) return in_committed("server optimizer state", state.status());
    if (absl::Status s = m->strategy_->LoadState(*state); !s.ok())
      return in_committed("server optimizer state", s);
    m->last_committed_ = c.round;
    if (m->ledger_->MayMissRoundsWithoutNoise()) {
      if (absl::Status s = m->ChargeRoundsWithoutNoise(); !s.ok()) return s;
    }
  }
  if (absl::Status s = m->ReplayExposures(); !s.ok()) return s;
  // A restored snapshot keeps the delta and budget of its time; the
  // settings are the operator's policy now (a raised budget lets rounds go
  // on, a lower one stops them).
  if (absl::Status s = m->ledger_->SetPolicy(settings.delta, settings.epsilon_budget,
                                             settings.epsilon_budget_against_coordinator);
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::vector<RoundRow>> rounds = store->Rounds(1);
  if (!rounds.ok()) return rounds.status();
  m->round_ = rounds->empty() ? 0 : (*rounds)[0].round;
  return m;
}

absl::Status RoundMachine::ForEachStoredRound(absl::string_view cannot_say, const StoredRoundVisitor& visit) {
  int64_t before = 0;
  while (true) {
    absl::StatusOr<std::vector<RoundRow>> page = store_->Rounds(100, before);
    if (!page.ok()) return page.status();
    for (const RoundRow& r : *page) {
      const nlohmann::json config = nlohmann::json::parse(r.config_json, nullptr, /*allow_exceptions=*/false);
      const nlohmann::json metrics =
          nlohmann::json::parse(r.metrics_json, nullptr, /*allow_exceptions=*/false);
      absl::StatusOr<bool> more;
      try {
        more = visit(r, config, metrics);
      } catch (const std::exception& e) {
        return absl::DataLossError(absl::StrCat("round ", r.round, " in ", store_->dir(),
                                                ": its stored config or metrics cannot say ", cannot_say,
                                                ": ", e.what()));
      }
      if (!more.ok()) return more.status();
      if (!*more) return absl::OkStatus();
    }
    if (page->size() < 100) return absl::OkStatus();
    before = page->back().round;
  }
}

absl::Status RoundMachine::ChargeRoundsWithoutNoise() {
  absl::StatusOr<std::vector<UserRow>> users = store_->Users();
  if (!users.ok()) return users.status();
  std::vector<std::string> everyone;
  for (const UserRow& u : *users) everyone.push_back(u.user_id);
  // Builds of the previous accounting name that already recorded such
  // rounds: those are in the snapshot, exactly.
  std::set<int64_t> recorded;
  for (const LedgerRound& r : ledger_->rounds()) recorded.insert(r.round);
  return ForEachStoredRound(
      "whether it had noise",
      [&](const RoundRow& r, const nlohmann::json& config,
          const nlohmann::json& metrics) -> absl::StatusOr<bool> {
        if (r.state != "committed" || r.round > last_committed_ || recorded.contains(r.round)) return true;
        if (!config.is_object()) throw std::invalid_argument("the config is not a JSON object");
        if (config.at("noise_multiplier").get<double>() != 0) return true;
        // Whom the coordinator saw: the contributors, and in a plain round
        // every sampled user (as ExposedUsers); everyone where not stored.
        std::vector<std::string> seen = everyone;
        if (metrics.is_object() && metrics.contains("contributors")) {
          seen = metrics.at("contributors").get<std::vector<std::string>>();
          if (config.value("aggregation", "") == "plain") {
            if (!config.contains("sampled")) {
              seen = everyone;
            } else {
              for (const std::string& user : config.at("sampled").get<std::vector<std::string>>())
                seen.push_back(user);
            }
          }
        }
        std::vector<std::string> eligible = everyone;
        eligible.insert(eligible.end(), seen.begin(), seen.end());
        ledger_->ChargeUnrecordedRoundWithoutNoise(eligible, seen);
        return true;
      });
}

absl::Status RoundMachine::ReplayExposures() {
  // Newest first, down to the last commit, whose snapshot has the rest.
  return ForEachStoredRound("whom it exposed",
                            [&](const RoundRow& r, const nlohmann::json& config,
                                const nlohmann::json& noted) -> absl::StatusOr<bool> {
                              if (r.round <= last_committed_) return false;
                              if (r.state != "aborted") return true;
                              // As ExposedUsers: a plain round's sampled users; a SecAgg+ round's
                              // survivors once it asked for unmasking. Rounds stored before the
                              // coordinator-facing multiplier was recorded count as hiding nothing.
                              if (!config.is_object()) throw std::invalid_argument("not a JSON object");
                              std::vector<std::string> exposed;
                              if (config.value("aggregation", "") == "plain") {
                                exposed = config.at("sampled").get<std::vector<std::string>>();
                              } else if (noted.is_object() && noted.contains("unmasking_survivors")) {
                                exposed = noted.at("unmasking_survivors").get<std::vector<std::string>>();
                              }
                              if (absl::Status s = ledger_->RecordExposure(
                                      exposed, config.value("coordinator_noise_multiplier", 0.0));
                                  !s.ok())
                                return s;
                              return true;
                            });
}

std::vector<std::string> RoundMachine::expected() const {
  std::vector<std::string> out;
  for (const auto& [name, done] : answered_) {
    if (!done) out.push_back(name);
  }
  return out;
}

absl::StatusOr<std::map<std::string, fedpers::v1::RoundInvitation>> RoundMachine::Open(
    std::span<const std::string> eligible, uint64_t seed) {
  if (stage_ != RoundStage::kIdle) return absl::FailedPreconditionError(absl::StrCat("round ", round_, " is still running"));
  const int64_t n_eligible = static_cast<int64_t>(eligible.size());
  if (n_eligible < settings_.min_clients) {
    return absl::FailedPreconditionError(absl::StrCat(n_eligible, " eligible clients, fewer than min_clients ",
                                                      settings_.min_clients));
  }
  const int64_t n = std::min(settings_.clients_per_round, n_eligible);
  const double q = static_cast<double>(n) / static_cast<double>(n_eligible);
  const int64_t round = round_ + 1;
  // Sample n of the eligible uniformly.
  std::mt19937_64 gen(seed);
  std::vector<std::string> pool = SampleClients(eligible, n, gen);
  const bool secure = settings_.secure_aggregation;
  absl::StatusOr<RoundPlan> plan = PlanRound(settings_, n, static_cast<size_t>(layout_.total_size()), gen());
  if (!plan.ok()) return plan.status();
  SecAggParams params = plan->params;
  const uint32_t k = params.degree(), t = params.threshold();
  params.set_session_nonce(static_cast<uint64_t>(round));
  dp_ = plan->dp;
  if (secure) {
    absl::StatusOr<secagg::Key32> graph_seed = secagg::RandomKey32();
    if (!graph_seed.ok()) return graph_seed.status();
    params.set_graph_seed(std::string(graph_seed->begin(), graph_seed->end()));
    if (absl::Status s = secagg::ValidateParams(params); !s.ok()) return s;
  }
  ring_ = plan->ring;
  // The ledger accounts the noise against the rounded update's norm bound,
  // in both noise modes (central noise is added to a sum of the same
  // rounded vectors), and distributed noise for the discrete Gaussians' own
  // loss (ChargedNoiseMultiplier).
  // Nothing above has touched the store or the ledger.
  double discrete_tau = 0;
  const double accounted_z =
      ChargedNoiseMultiplier(settings_, ring_, dp_, static_cast<size_t>(params.vector_length()), &discrete_tau);
  const double coordinator_z = CoordinatorNoiseMultiplier(
      settings_, ring_, dp_, static_cast<size_t>(params.vector_length()), accounted_z);
  // A round without noise costs an infinite epsilon, which only infinite
  // budgets allow.
  if (absl::Status s =
          ledger_->CheckCanOpen(round, q, accounted_z, LedgerNoise(settings_), coordinator_z, eligible);
      !s.ok())
    return s;
  std::optional<secagg::SecAggServer> server;
  if (secure) {
    absl::StatusOr<secagg::SecAggServer> created = secagg::SecAggServer::Create(params);
    if (!created.ok()) return created.status();
    server = std::move(*created);
  }
  absl::StatusOr<std::string> global_bytes =
      layout_.ToSafetensors(std::span<const float>(global_.data(), static_cast<size_t>(global_.size())));
  if (!global_bytes.ok()) return global_bytes.status();
  nlohmann::json config = {{"sampled", pool},
                           {"eligible", n_eligible},
                           {"q", q},
                           {"aggregation", secure ? "secagg+" : "plain"},
                           {"degree", k},
                           {"threshold", t},
                           {"ring_bits", ring_.bits},
                           {"scale", ring_.scale},
                           {"clip_norm", settings_.clip_norm},
                           {"noise_multiplier", settings_.noise_multiplier},
                           {"central_noise", settings_.central_noise},
                           // The clients split the noise so that this many shares reach z S.
                           {"noise_shares", dp_.min_clients},
                           {"rotate", dp_.rotate},
                           {"vector_length", params.vector_length()},
                           {"discrete_gaussian_tau", discrete_tau},
                           {"accounted_noise_multiplier", accounted_z},
                           // What hides a sampled user from the coordinator (ReplayExposures).
                           {"coordinator_noise_multiplier", coordinator_z}};
  if (absl::Status s = store_->OpenRound(round, config.dump()); !s.ok()) return s;
  round_ = round;
  server_ = std::move(server);
  round_adapter_ = std::move(*global_bytes);
  vector_length_ = params.vector_length();
  accounted_noise_multiplier_ = accounted_z;
  coordinator_noise_multiplier_ = coordinator_z;
  min_survivors_ = dp_.min_clients;  // max(t, min_clients), as planned
  plain_sum_.clear();
  plain_ids_.clear();
  if (!secure) plain_sum_.assign(static_cast<size_t>(vector_length_), 0);
  ids_.clear();
  names_.clear();
  answered_.clear();
  eligible_.assign(eligible.begin(), eligible.end());
  std::map<std::string, fedpers::v1::RoundInvitation> invitations;
  for (size_t i = 0; i < pool.size(); ++i) {
    const uint32_t id = static_cast<uint32_t>(i + 1);
    ids_[pool[i]] = id;
    names_[id] = pool[i];
    answered_[pool[i]] = false;
    fedpers::v1::RoundInvitation& inv = invitations[pool[i]];
    inv.set_round(round);
    inv.set_secagg_id(id);
    *inv.mutable_secagg() = params;
    *inv.mutable_ring() = dp::ToProto(ring_);
    *inv.mutable_dp() = dp::ToProto(dp_);
    inv.set_layout_fingerprint(layout_.Fingerprint());
    inv.set_aggregation(secure ? fedpers::v1::AGGREGATION_SECAGG_PLUS : fedpers::v1::AGGREGATION_PLAIN);
  }
  stage_ = secure ? RoundStage::kKeys : RoundStage::kInputs;
  return invitations;
}

absl::Status RoundMachine::Handle(const std::string& client, const SecAggClientMessage& message) {
  if (stage_ == RoundStage::kIdle) return absl::FailedPreconditionError("no round is open");
  auto it = ids_.find(client);
  if (it == ids_.end()) return absl::PermissionDeniedError(absl::StrCat("client '", client, "' is not in round ", round_));
  // The SecAgg id inside the message must be the client's own: identities
  // come from certificates, not from message fields.
  uint32_t claimed = 0;
  switch (message.message_case()) {
    case SecAggClientMessage::kAdvertiseKeys: claimed = message.advertise_keys().keys().client_id(); break;
    case SecAggClientMessage::kShareKeys: claimed = message.share_keys().client_id(); break;
    case SecAggClientMessage::kMaskedInput: claimed = message.masked_input().client_id(); break;
    case SecAggClientMessage::kUnmaskingResponse: claimed = message.unmasking_response().client_id(); break;
    case SecAggClientMessage::kPlainInput: claimed = message.plain_input().client_id(); break;
    default: return absl::InvalidArgumentError("empty SecAgg message");
  }
  if (claimed != it->second) {
    return absl::PermissionDeniedError(absl::StrCat("client '", client, "' sent a message in the name of another client"));
  }
  const bool plain_message = message.message_case() == SecAggClientMessage::kPlainInput;
  if (plain_message != !settings_.secure_aggregation) {
    return absl::InvalidArgumentError(absl::StrCat("client '", client, "' sent ",
                                                   plain_message ? "a plain input to a SecAgg+ round"
                                                                 : "a SecAgg+ message to a round without secure aggregation"));
  }
  if (plain_message) return HandlePlainInput(client, claimed, message.plain_input());
  if (absl::Status s = server_->Handle(message); !s.ok()) return s;
  answered_[client] = true;
  return absl::OkStatus();
}

absl::Status RoundMachine::HandlePlainInput(const std::string& client, uint32_t id, const fedpers::v1::PlainInput& input) {
  if (std::find(plain_ids_.begin(), plain_ids_.end(), id) != plain_ids_.end()) {
    return absl::AlreadyExistsError(absl::StrCat("client '", client, "' sent its input twice"));
  }
  absl::StatusOr<std::vector<uint32_t>> values =
      secagg::UnpackBits(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(input.packed().data()),
                                                  input.packed().size()),
                         static_cast<size_t>(vector_length_), ring_.bits);
  if (!values.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("client '", client, "': ", values.status().message()));
  }
  // Addition modulo 2^b, as SecAgg+ sums (the ring encoding relies on it).
  const uint32_t mask = ring_.bits >= 32 ? ~uint32_t{0} : (uint32_t{1} << ring_.bits) - 1;
  for (size_t i = 0; i < values->size(); ++i) plain_sum_[i] = (plain_sum_[i] + (*values)[i]) & mask;
  plain_ids_.push_back(id);
  answered_[client] = true;
  return absl::OkStatus();
}

std::vector<std::string> RoundMachine::ExposedUsers() const {
  std::vector<std::string> users;
  if (!server_) {
    // A plain round: each sampled client's input reaches the coordinator
    // whenever it is sent, before the round ends or after (and is refused
    // then, but seen).
    for (const auto& [id, name] : names_) users.push_back(name);
  } else if (stage_ == RoundStage::kUnmasking) {
    // Unmasking requests went out: enough answers reveal the survivors' sum.
    for (uint32_t id : server_->survivors()) users.push_back(names_.at(id));
  }
  return users;
}

std::vector<uint32_t> RoundMachine::ContributorIds() const {
  if (server_) {
    const auto& survivors = server_->survivors();
    return std::vector<uint32_t>(survivors.begin(), survivors.end());
  }
  std::vector<uint32_t> ids = plain_ids_;
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::StatusOr<RoundMachine::StageOutput> RoundMachine::FinishStage() {
  if (stage_ == RoundStage::kIdle) return absl::FailedPreconditionError("no round is open");
  StageOutput out;
  if (!settings_.secure_aggregation) {
    // The one stage of a plain round: whoever sent an input is in the sum.
    if (static_cast<int64_t>(plain_ids_.size()) < min_survivors_) {
      return CommitOrAbort(absl::FailedPreconditionError(
          absl::StrCat(plain_ids_.size(), " inputs, fewer than the ", min_survivors_,
                       " the round needs (its noise is split among that many)")));
    }
    return CommitOrAbort(std::move(plain_sum_));
  }
  absl::StatusOr<secagg::ServerMessages> messages;
  switch (stage_) {
    case RoundStage::kKeys: messages = server_->FinishKeys(); break;
    case RoundStage::kShares: messages = server_->FinishShares(); break;
    case RoundStage::kInputs:
      // Fewer masked inputs than the noise was split among would unmask a
      // sum with less noise than the ledger charges. PlanRound raises the
      // threshold to min_clients, so SecAgg+ refuses that already; this
      // keeps it true whatever the plan.
      if (static_cast<int64_t>(server_->survivors().size()) < min_survivors_) {
        const std::string why =
            absl::StrCat(server_->survivors().size(), " masked inputs, fewer than the ", min_survivors_,
                         " the round needs (its noise is split among that many): not unmasked");
        (void)Abort(why);
        return absl::FailedPreconditionError(why);
      }
      messages = server_->FinishInputs();
      // Before any unmasking request goes out, the store learns whose sum
      // may be revealed: an abort or a crash from here on charges them.
      if (messages.ok()) {
        std::vector<std::string> survivors;
        for (uint32_t id : server_->survivors()) survivors.push_back(names_.at(id));
        if (absl::Status s =
                store_->NoteOpenRound(round_, nlohmann::json({{"unmasking_survivors", survivors}}).dump());
            !s.ok()) {
          messages = s;
        }
      }
      break;
    case RoundStage::kUnmasking: return CommitOrAbort(server_->Finish());
    case RoundStage::kIdle: break;
  }
  if (!messages.ok()) {
    (void)Abort(std::string(messages.status().message()));
    return messages.status();
  }
  for (auto& [id, m] : *messages) out.outgoing[names_.at(id)] = std::move(m);
  for (auto& [name, done] : answered_) done = !out.outgoing.count(name);  // only recipients are expected next
  stage_ = static_cast<RoundStage>(static_cast<int>(stage_) + 1);
  return out;
}

absl::StatusOr<RoundMachine::StageOutput> RoundMachine::CommitOrAbort(
    absl::StatusOr<std::vector<uint32_t>> ring_sum) {
  absl::StatusOr<RoundSummary> summary =
      ring_sum.ok() ? Commit(std::move(*ring_sum)) : absl::StatusOr<RoundSummary>(ring_sum.status());
  if (!summary.ok()) {
    (void)Abort(std::string(summary.status().message()));
    return summary.status();
  }
  StageOutput out;
  out.committed = *summary;
  stage_ = RoundStage::kIdle;
  server_.reset();
  std::string().swap(round_adapter_);
  plain_sum_.clear();
  plain_ids_.clear();
  return out;
}

absl::Status RoundMachine::Abort(const std::string& reason) {
  if (stage_ == RoundStage::kIdle) return absl::FailedPreconditionError("no round is open");
  // What the coordinator may have seen of a round that does not commit is
  // charged against it (ExposedUsers; a restart charges the same from the
  // store: ReplayExposures).
  (void)ledger_->RecordExposure(ExposedUsers(), coordinator_noise_multiplier_);
  stage_ = RoundStage::kIdle;
  server_.reset();
  std::string().swap(round_adapter_);
  plain_sum_.clear();
  plain_ids_.clear();
  return store_->AbortRound(round_, reason);
}

absl::StatusOr<RoundSummary> RoundMachine::Commit(std::vector<uint32_t> ring_sum) {
  const size_t d = static_cast<size_t>(layout_.total_size());
  absl::StatusOr<std::vector<float>> sum = dp::DecodeAggregate(ring_sum, ring_, dp_, d);
  if (!sum.ok()) return sum.status();
  const std::vector<uint32_t> contributor_ids = ContributorIds();
  const int64_t survivors = static_cast<int64_t>(contributor_ids.size());
  if (survivors < min_survivors_) {
    // The noise shares were split for min_survivors_ (max of min_clients and
    // the SecAgg threshold): fewer would carry less noise than accounted.
    return absl::FailedPreconditionError(
        absl::StrCat(survivors, " survivors, fewer than the ", min_survivors_, " the noise was split for"));
  }
  if (settings_.central_noise && settings_.noise_multiplier > 0) {
    absl::StatusOr<dp::RandomSource> rng = dp::RandomSource::FromCsprng();
    if (!rng.ok()) return rng.status();
    if (absl::Status s = dp::AddCentralGaussianNoise(*sum, settings_.noise_multiplier, settings_.clip_norm, *rng); !s.ok()) {
      return s;
    }
  }
  Eigen::VectorXf mean = Eigen::Map<const Eigen::VectorXf>(sum->data(), static_cast<Eigen::Index>(d)) /
                         static_cast<float>(survivors);
  Eigen::VectorXf next = global_;
  // The strategy's moments move with Apply; restore them if the commit fails.
  const std::map<std::string, Eigen::VectorXf> strategy_before = strategy_->State();
  if (absl::Status s = strategy_->Apply(next, mean); !s.ok()) return s;
  auto restore = [&](absl::Status s) {
    (void)strategy_->LoadState(strategy_before);
    return s;
  };
  PrivacyLedger ledger = *ledger_;
  const double q = static_cast<double>(ids_.size()) / static_cast<double>(eligible_.size());
  std::vector<std::string> contributors;  // whose inputs are in the sum
  for (uint32_t id : contributor_ids) contributors.push_back(names_.at(id));
  // Without noise (z and coordinator z both 0) the ledger's epsilon and the
  // contributors' epsilon against the coordinator become infinite.
  if (absl::Status s = ledger.RecordRound(round_, q, accounted_noise_multiplier_, LedgerNoise(settings_),
                                          coordinator_noise_multiplier_, contributors, eligible_);
      !s.ok()) {
    return restore(s);
  }
  if (!server_) {
    // The sampled users of a plain round who are not in the sum may still
    // have sent an input the coordinator saw (late, or refused).
    std::vector<std::string> others;
    for (const auto& [id, name] : names_) {
      if (!std::binary_search(contributor_ids.begin(), contributor_ids.end(), id)) others.push_back(name);
    }
    if (absl::Status s = ledger.RecordExposure(others, coordinator_noise_multiplier_); !s.ok())
      return restore(s);
  }
  absl::StatusOr<std::string> global_bytes =
      layout_.ToSafetensors(std::span<const float>(next.data(), static_cast<size_t>(next.size())));
  if (!global_bytes.ok()) return restore(global_bytes.status());
  RoundSummary summary{round_,      static_cast<int64_t>(ids_.size()),   survivors, ledger.epsilon(),
                       mean.norm(), ledger.epsilon_against_coordinator()};
  nlohmann::json metrics = {
      {"sampled", summary.sampled},
      {"survivors", survivors},
      {"contributors", contributors},
      {"epsilon", EpsilonToJson(summary.epsilon)},
      {"epsilon_against_coordinator", EpsilonToJson(summary.epsilon_against_coordinator)},
      {"delta", ledger.delta()},  // the epsilons' (a restart may change it)
      {"update_norm", summary.update_norm},
      {"aggregation", server_ ? "secagg+" : "plain"}};
  if (server_) {
    metrics["secagg"] = {{"advertised", server_->stats().advertised},
                         {"shared", server_->stats().shared},
                         {"submitted", server_->stats().submitted}};
  }
  if (absl::Status s = store_->CommitRound(round_, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(global_bytes->data()), global_bytes->size()),
                                           metrics.dump(), ledger.ToJson(), SerializeStrategyState(strategy_->State()));
      !s.ok()) {
    return restore(s);
  }
  // Only now, with the round durable, does in-memory state move.
  global_ = std::move(next);
  ledger_ = std::move(ledger);
  last_committed_ = round_;
  return summary;
}

}  // namespace fedpers
