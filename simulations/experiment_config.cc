// Experiment config: names, validation and JSON (no libtorch).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/flat_layout.h"
#include "common/host_memory.h"
#include "common/json_fields.h"
#include "coordinator/privacy_ledger.h"
#include "nlohmann/json.hpp"
#include "simulations/experiment.h"

namespace fedpers {
namespace {

using Json = nlohmann::json;

constexpr Method kAllMethods[] = {Method::kBase,       Method::kLocal,      Method::kGlobal,
                                  Method::kGlobalResidual, Method::kFedAvgLora, Method::kCentralized};

}  // namespace

std::string RingBitsName(uint32_t ring_bits) { return ring_bits == 0 ? "auto" : absl::StrCat(ring_bits); }

const char* MethodName(Method method) {
  switch (method) {
    case Method::kBase: return "base";
    case Method::kLocal: return "local";
    case Method::kGlobal: return "global";
    case Method::kGlobalResidual: return "global+residual";
    case Method::kFedAvgLora: return "fedavg-lora";
    case Method::kCentralized: return "centralized";
  }
  return "?";
}

absl::StatusOr<Method> ParseMethod(absl::string_view name) {
  for (Method m : kAllMethods) {
    if (name == MethodName(m)) return m;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown method '", name, "' (base, local, global, global+residual, fedavg-lora, centralized)"));
}

std::vector<Method> AllMethods() { return std::vector<Method>(std::begin(kAllMethods), std::end(kAllMethods)); }

int64_t ExperimentConfig::EffectiveMinClients() const {
  if (min_clients > 0) return min_clients;
  return std::max<int64_t>(2, (clients_per_round + 1) / 2);
}

int64_t ExperimentConfig::EffectiveEvalEvery() const {
  if (eval_every > 0) return eval_every;
  return std::max<int64_t>(1, (rounds + 4) / 5);
}

std::string ExperimentConfig::EffectiveBase() const {
  return base.empty() ? (std::filesystem::path(out) / "base").string() : base;
}

absl::Status ExperimentConfig::ValidateForModel(int64_t eligible) const {
  const std::filesystem::path dir = EffectiveBase();
  std::error_code ec;
  const bool have_base = std::filesystem::exists(dir / "model.safetensors", ec);
  absl::StatusOr<ModelConfig> model =
      ResolveModelConfig(have_base ? (dir / "config.json").string() : pretrain.config);
  if (!model.ok()) {
    return absl::Status(model.status().code(), absl::StrCat(have_base ? "base model: " : "\"pretrain\" config: ",
                                                            model.status().message()));
  }
  if (absl::Status s = ValidateLoraForModel(*model, lora); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("experiment config: ", s.message()));
  }
  if (absl::Status s = local.ValidateForModel(*model, AvailableMemoryBytes()); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("experiment config: \"local\": ", s.message()));
  }
  // The global adapter is B_g, or A_g and B_g for fedavg-lora.
  if (eligible == 0) eligible = users;
  if (eligible == 0 && target_epsilon > 0) return absl::OkStatus();  // the noise depends on the count
  for (Method m : methods) {
    if (m != Method::kGlobal && m != Method::kGlobalResidual && m != Method::kFedAvgLora) continue;
    LoraConfig shared = lora;
    shared.train_global_a = m == Method::kFedAvgLora;
    absl::StatusOr<FlatLayout> layout = GlobalAdapterLayout(*model, shared);
    if (!layout.ok()) return layout.status();
    const size_t size = static_cast<size_t>(layout->total_size());
    // Without a target the count only matters to the budget check below.
    absl::StatusOr<RoundSettings> rounds =
        FederatedRoundSettings(size, eligible > 0 ? eligible : clients_per_round);
    absl::Status s = rounds.ok() ? CheckRoundsCanOpen(*rounds, size) : rounds.status();
    if (s.ok() && eligible > 0 && std::isfinite(epsilon_budget)) {
      // A budget below one round's cost would refuse every round, after
      // the pretraining.
      absl::StatusOr<double> one_round = ProjectedEpsilon(*rounds, size, eligible, 1);
      s = one_round.status();
      if (s.ok() && *one_round > epsilon_budget) {
        s = absl::InvalidArgumentError(absl::StrFormat(
            "\"epsilon_budget\" %g is below what one round costs (epsilon %.4g with %d of %d users sampled): "
            "raise it or the noise",
            epsilon_budget, *one_round, std::min(clients_per_round, eligible), eligible));
      }
    }
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("experiment config (", MethodName(m), "): ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RoundSettings> ExperimentConfig::FederatedRoundSettings(size_t layout_size,
                                                                       int64_t eligible) const {
  RoundSettings rs;
  rs.clients_per_round = clients_per_round;
  rs.min_clients = EffectiveMinClients();
  rs.ring_bits = ring_bits;
  rs.clip_norm = clip_norm;
  rs.noise_multiplier = noise_multiplier;
  rs.secure_aggregation = secure_agg;
  rs.delta = delta;
  rs.epsilon_budget = epsilon_budget;
  rs.epsilon_budget_against_coordinator = epsilon_budget_against_coordinator;
  rs.strategy = strategy;
  if (target_epsilon > 0) {
    absl::StatusOr<double> z = NoiseMultiplierForEpsilon(rs, layout_size, eligible, rounds, target_epsilon);
    if (!z.ok())
      return absl::Status(z.status().code(), absl::StrCat("\"target_epsilon\": ", z.status().message()));
    rs.noise_multiplier = *z;
  }
  return rs;
}

absl::Status ExperimentConfig::Validate() const {
  auto bad = [](absl::string_view what) { return absl::InvalidArgumentError(absl::StrCat("experiment config: ", what)); };
  if (data.empty()) return bad("\"data\" names no corpus");
  if (users < 0) return bad("\"users\" must be >= 0");
  if (min_user_bytes < 1) return bad("\"min_user_bytes\" must be positive");
  if (select != "random" && select != "largest") return bad("\"select\" must be \"random\" or \"largest\"");
  if (!(train_fraction > 0 && train_fraction < 1)) return bad("\"train_fraction\" must be in (0, 1)");
  if (pretrain.steps < 1 || pretrain.batch_size < 1 || !(pretrain.learning_rate > 0)) {
    return bad("\"pretrain\" needs positive steps, batch_size and learning_rate");
  }
  if (absl::Status s = lora.Validate(); !s.ok()) return s;
  if (!lora.global_enabled || !lora.residual_enabled) {
    return bad("\"lora\" must keep both branches on (the methods switch them)");
  }
  if (methods.empty()) return bad("\"methods\" is empty");
  for (size_t i = 0; i < methods.size(); ++i) {
    if (std::find(methods.begin(), methods.begin() + static_cast<std::ptrdiff_t>(i), methods[i]) !=
        methods.begin() + static_cast<std::ptrdiff_t>(i)) {
      return bad(absl::StrCat("method '", MethodName(methods[i]), "' is listed twice"));
    }
  }
  // Far beyond what two cores simulate; the bound keeps a typo from hanging
  // the accounting (a target epsilon's search sums every round's RDP).
  if (rounds < 1 || rounds > kMaxRounds) return bad(absl::StrCat("\"rounds\" must be 1 to ", kMaxRounds));
  if (clients_per_round < 2) return bad("\"clients_per_round\" must be at least 2");
  if (users != 0 && clients_per_round > users) return bad("\"clients_per_round\" exceeds \"users\"");
  const int64_t mc = EffectiveMinClients();
  if (mc < 2 || mc > clients_per_round) return bad("\"min_clients\" must be in [2, clients_per_round]");
  if (absl::Status s = local.Validate(); !s.ok()) return bad(absl::StrCat("\"local\": ", s.message()));
  if (ring_bits != 0 && (ring_bits < 8 || ring_bits > 32)) {
    return bad("\"ring_bits\" must be 0 (sized per round) or in [8, 32]");
  }
  if (!(clip_norm >= RoundSettings::kMinClipNorm && clip_norm <= RoundSettings::kMaxClipNorm)) {
    return bad(absl::StrCat("\"clip_norm\" must be in [", RoundSettings::kMinClipNorm, ", ",
                            RoundSettings::kMaxClipNorm, "], got ", clip_norm));
  }
  if (!(noise_multiplier >= 0) || !std::isfinite(noise_multiplier)) return bad("\"noise_multiplier\" must be >= 0");
  if (!(delta > 0 && delta < 1)) return bad("\"delta\" must be in (0, 1)");
  if (!(epsilon_budget > 0) || !(epsilon_budget_against_coordinator > 0)) {
    return bad("\"epsilon_budget\" and \"epsilon_budget_against_coordinator\" must be positive (or \"inf\")");
  }
  if (!(target_epsilon >= 0) || !std::isfinite(target_epsilon)) return bad("\"target_epsilon\" must be >= 0");
  if (!Noised() && (std::isfinite(epsilon_budget) || std::isfinite(epsilon_budget_against_coordinator))) {
    return bad(
        "a finite epsilon budget needs noise (\"noise_multiplier\" > 0): without it a round's epsilon is "
        "infinite");
  }
  if (absl::Status s = strategy.Validate(); !s.ok()) return s;
  if (!(dropout >= 0 && dropout < 1)) return bad("\"dropout\" must be in [0, 1)");
  if (eval_every < 0 || eval_tokens < 0) return bad("\"eval_every\" and \"eval_tokens\" must be >= 0");
  if (workers < 0 || workers > kMaxWorkers)
    return bad(absl::StrCat("\"workers\" must be 0 to ", kMaxWorkers));
  if (out.empty()) return bad("\"out\" is empty");
  return absl::OkStatus();
}

absl::StatusOr<ExperimentConfig> ParseExperimentConfig(const std::string& json_text) {
  Json j;
  if (absl::Status s = ParseJsonObject(json_text, "the experiment config", j); !s.ok()) return s;
  const char* top = "the experiment config";
  if (absl::Status s = CheckOnlyKeys(j,
                                     {"data",
                                      "skip_bad_records",
                                      "users",
                                      "min_user_bytes",
                                      "select",
                                      "train_fraction",
                                      "base",
                                      "pretrain",
                                      "lora",
                                      "methods",
                                      "rounds",
                                      "clients_per_round",
                                      "min_clients",
                                      "local",
                                      "secure_agg",
                                      "ring_bits",
                                      "clip_norm",
                                      "noise_multiplier",
                                      "target_epsilon",
                                      "delta",
                                      "epsilon_budget",
                                      "epsilon_budget_against_coordinator",
                                      "strategy",
                                      "dropout",
                                      "eval_every",
                                      "eval_tokens",
                                      "workers",
                                      "seed",
                                      "out",
                                      "references"},
                                     top);
      !s.ok()) {
    return s;
  }
  ExperimentConfig c;
  FEDPERS_READ_JSON(j, "data", c.data, "");
  FEDPERS_READ_JSON(j, "skip_bad_records", c.skip_bad_records, "");
  FEDPERS_READ_JSON(j, "users", c.users, "");
  FEDPERS_READ_JSON(j, "min_user_bytes", c.min_user_bytes, "");
  FEDPERS_READ_JSON(j, "select", c.select, "");
  FEDPERS_READ_JSON(j, "train_fraction", c.train_fraction, "");
  FEDPERS_READ_JSON(j, "base", c.base, "");
  if (j.contains("pretrain")) {
    const Json& p = j["pretrain"];
    if (absl::Status s = CheckOnlyKeys(p, {"corpus", "config", "steps", "batch_size", "learning_rate"}, "\"pretrain\"");
        !s.ok()) {
      return s;
    }
    FEDPERS_READ_JSON(p, "corpus", c.pretrain.corpus, "pretrain: ");
    FEDPERS_READ_JSON(p, "config", c.pretrain.config, "pretrain: ");
    FEDPERS_READ_JSON(p, "steps", c.pretrain.steps, "pretrain: ");
    FEDPERS_READ_JSON(p, "batch_size", c.pretrain.batch_size, "pretrain: ");
    FEDPERS_READ_JSON(p, "learning_rate", c.pretrain.learning_rate, "pretrain: ");
  }
  if (j.contains("lora")) {
    absl::StatusOr<LoraConfig> lora = ParseLoraConfigJson(j["lora"].dump());
    if (!lora.ok()) return lora.status();
    c.lora = *lora;
  }
  if (j.contains("methods")) {
    std::vector<std::string> names;
    FEDPERS_READ_JSON(j, "methods", names, "");
    c.methods.clear();
    for (const std::string& n : names) {
      absl::StatusOr<Method> m = ParseMethod(n);
      if (!m.ok()) return m.status();
      c.methods.push_back(*m);
    }
  }
  FEDPERS_READ_JSON(j, "rounds", c.rounds, "");
  FEDPERS_READ_JSON(j, "clients_per_round", c.clients_per_round, "");
  FEDPERS_READ_JSON(j, "min_clients", c.min_clients, "");
  if (j.contains("local")) {
    const Json& l = j["local"];
    if (absl::Status s = CheckOnlyKeys(l, {"global_steps", "residual_steps", "schedule", "batch_size", "micro_batch_size",
                                      "recompute_activations", "seq_len",
                                      "global_learning_rate", "residual_learning_rate"},
                                  "\"local\"");
        !s.ok()) {
      return s;
    }
    FEDPERS_READ_JSON(l, "global_steps", c.local.global_steps, "local: ");
    FEDPERS_READ_JSON(l, "residual_steps", c.local.residual_steps, "local: ");
    FEDPERS_READ_JSON(l, "batch_size", c.local.batch_size, "local: ");
    FEDPERS_READ_JSON(l, "micro_batch_size", c.local.micro_batch_size, "local: ");
    FEDPERS_READ_JSON(l, "recompute_activations", c.local.recompute_activations, "local: ");
    FEDPERS_READ_JSON(l, "seq_len", c.local.seq_len, "local: ");
    FEDPERS_READ_JSON(l, "global_learning_rate", c.local.global_learning_rate, "local: ");
    FEDPERS_READ_JSON(l, "residual_learning_rate", c.local.residual_learning_rate, "local: ");
    if (l.contains("schedule")) {
      std::string name;
      FEDPERS_READ_JSON(l, "schedule", name, "local: ");
      absl::StatusOr<TrainingSchedule> schedule = ParseTrainingSchedule(name);
      if (!schedule.ok()) return schedule.status();
      c.local.schedule = *schedule;
    }
  }
  FEDPERS_READ_JSON(j, "secure_agg", c.secure_agg, "");
  FEDPERS_READ_JSON(j, "ring_bits", c.ring_bits, "");
  FEDPERS_READ_JSON(j, "clip_norm", c.clip_norm, "");
  FEDPERS_READ_JSON(j, "noise_multiplier", c.noise_multiplier, "");
  FEDPERS_READ_JSON(j, "target_epsilon", c.target_epsilon, "");
  if (c.target_epsilon > 0 && j.contains("noise_multiplier")) {
    return absl::InvalidArgumentError(
        "the experiment config gives both \"noise_multiplier\" and \"target_epsilon\": the target sets the "
        "noise");
  }
  FEDPERS_READ_JSON(j, "delta", c.delta, "");
  for (const auto& [key, budget] :
       {std::pair{"epsilon_budget", &c.epsilon_budget},
        std::pair{"epsilon_budget_against_coordinator", &c.epsilon_budget_against_coordinator}}) {
    if (!j.contains(key)) continue;
    absl::StatusOr<double> parsed = BudgetFromJson(j[key], key);
    if (!parsed.ok()) return parsed.status();
    *budget = *parsed;
  }
  if (j.contains("strategy")) {
    const Json& st = j["strategy"];
    if (absl::Status s = CheckOnlyKeys(st, {"name", "server_learning_rate", "beta1", "beta2", "tau"}, "\"strategy\"");
        !s.ok()) {
      return s;
    }
    FEDPERS_READ_JSON(st, "name", c.strategy.name, "strategy: ");
    FEDPERS_READ_JSON(st, "server_learning_rate", c.strategy.server_learning_rate, "strategy: ");
    FEDPERS_READ_JSON(st, "beta1", c.strategy.beta1, "strategy: ");
    FEDPERS_READ_JSON(st, "beta2", c.strategy.beta2, "strategy: ");
    FEDPERS_READ_JSON(st, "tau", c.strategy.tau, "strategy: ");
  }
  FEDPERS_READ_JSON(j, "dropout", c.dropout, "");
  FEDPERS_READ_JSON(j, "eval_every", c.eval_every, "");
  FEDPERS_READ_JSON(j, "eval_tokens", c.eval_tokens, "");
  FEDPERS_READ_JSON(j, "workers", c.workers, "");
  FEDPERS_READ_JSON(j, "seed", c.seed, "");
  FEDPERS_READ_JSON(j, "out", c.out, "");
  if (j.contains("references")) {
    if (!j["references"].is_array()) return absl::InvalidArgumentError("\"references\" must be an array");
    for (const Json& r : j["references"]) {
      if (absl::Status s = CheckOnlyKeys(r, {"name", "accuracy", "note"}, "a reference"); !s.ok()) return s;
      ReferenceResult ref;
      FEDPERS_READ_JSON(r, "name", ref.name, "reference: ");
      FEDPERS_READ_JSON(r, "accuracy", ref.accuracy, "reference: ");
      FEDPERS_READ_JSON(r, "note", ref.note, "reference: ");
      if (ref.name.empty() || !(ref.accuracy >= 0 && ref.accuracy <= 1)) {
        return absl::InvalidArgumentError("a reference needs a name and an accuracy in [0, 1]");
      }
      c.references.push_back(std::move(ref));
    }
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

std::string ExperimentConfigToJson(const ExperimentConfig& c) {
  nlohmann::ordered_json j;
  j["data"] = c.data;
  j["skip_bad_records"] = c.skip_bad_records;
  j["users"] = c.users;
  j["min_user_bytes"] = c.min_user_bytes;
  j["select"] = c.select;
  j["train_fraction"] = c.train_fraction;
  j["base"] = c.base;
  j["pretrain"] = {{"corpus", c.pretrain.corpus}, {"config", c.pretrain.config}, {"steps", c.pretrain.steps}, {"batch_size", c.pretrain.batch_size},
                   {"learning_rate", c.pretrain.learning_rate}};
  j["lora"] = nlohmann::ordered_json::parse(LoraConfigToJson(c.lora));
  std::vector<std::string> methods;
  for (Method m : c.methods) methods.push_back(MethodName(m));
  j["methods"] = methods;
  j["rounds"] = c.rounds;
  j["clients_per_round"] = c.clients_per_round;
  j["min_clients"] = c.EffectiveMinClients();
  j["local"] = {{"global_steps", c.local.global_steps},
                {"residual_steps", c.local.residual_steps},
                {"schedule", TrainingScheduleName(c.local.schedule)},
                {"batch_size", c.local.batch_size},
                {"micro_batch_size", c.local.micro_batch_size},
                {"recompute_activations", c.local.recompute_activations},
                {"seq_len", c.local.seq_len},
                {"global_learning_rate", c.local.global_learning_rate},
                {"residual_learning_rate", c.local.residual_learning_rate}};
  j["secure_agg"] = c.secure_agg;
  j["ring_bits"] = c.ring_bits;
  j["clip_norm"] = c.clip_norm;
  if (c.target_epsilon > 0) {
    j["target_epsilon"] = c.target_epsilon;  // each method's noise multiplier is in summary.json
  } else {
    j["noise_multiplier"] = c.noise_multiplier;
  }
  j["delta"] = c.delta;
  j["epsilon_budget"] = EpsilonToJson(c.epsilon_budget);
  j["epsilon_budget_against_coordinator"] = EpsilonToJson(c.epsilon_budget_against_coordinator);
  j["strategy"] = {{"name", c.strategy.name},
                   {"server_learning_rate", c.strategy.server_learning_rate},
                   {"beta1", c.strategy.beta1},
                   {"beta2", c.strategy.beta2},
                   {"tau", c.strategy.tau}};
  j["dropout"] = c.dropout;
  j["eval_every"] = c.EffectiveEvalEvery();
  j["eval_tokens"] = c.eval_tokens;
  j["workers"] = c.workers;
  j["seed"] = c.seed;
  j["out"] = c.out;
  if (!c.references.empty()) {
    nlohmann::ordered_json refs = nlohmann::ordered_json::array();
    for (const ReferenceResult& r : c.references) refs.push_back({{"name", r.name}, {"accuracy", r.accuracy}, {"note", r.note}});
    j["references"] = refs;
  }
  return j.dump(2) + "\n";
}

}  // namespace fedpers
