#include "coordinator/serve_config.h"

#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/host_memory.h"
#include "common/host_port.h"
#include "common/json_fields.h"
#include "common/model_config.h"
#include "coordinator/privacy_ledger.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

using Json = nlohmann::json;

std::string Resolve(const std::string& path, const std::string& base) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(base) / path).string();
}

}  // namespace

absl::StatusOr<ServeConfig> ParseServeConfig(const std::string& text, const std::string& config_dir) {
  Json j;
  if (absl::Status s = ParseJsonObject(text, "the serve config", j); !s.ok()) return s;
  if (absl::Status s = CheckOnlyKeys(j, {"listen", "state_dir", "base", "lora", "tls", "insecure", "round",
                                         "stage_timeout_ms", "round_interval_ms", "max_rounds", "liveness_timeout_ms",
                                         "start_paused", "admin_page_bytes"},
                                     "the serve config");
      !s.ok()) {
    return s;
  }
  ServeConfig c;
  c.serve.listen = "127.0.0.1:7443";
  FEDPERS_READ_JSON(j, "listen", c.serve.listen, "");
  if (absl::Status s = CheckHostPort(c.serve.listen, /*allow_port_zero=*/true); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("serve config \"listen\": ", s.message()));
  }
  std::string state_dir = "coordinator-state", base;
  FEDPERS_READ_JSON(j, "state_dir", state_dir, "");
  if (state_dir.empty())
    return absl::InvalidArgumentError("\"state_dir\" is empty: name the coordinator's state directory");
  c.state_dir = Resolve(state_dir, config_dir);
  FEDPERS_READ_JSON(j, "insecure", c.serve.insecure, "");
  if (c.serve.insecure && j.contains("tls")) {
    return absl::InvalidArgumentError(
        "serve config has both \"tls\" and \"insecure\": true; keep the one you mean");
  }
  if (j.contains("tls")) {
    const Json& t = j["tls"];
    if (absl::Status s = CheckOnlyKeys(t, {"cert", "key", "ca"}, "\"tls\""); !s.ok()) return s;
    for (const char* key : {"cert", "key", "ca"}) {
      if (!t.contains(key)) return absl::InvalidArgumentError(absl::StrCat("\"tls\" needs \"", key, "\""));
    }
    FEDPERS_READ_JSON(t, "cert", c.serve.cert_file, "tls: ");
    FEDPERS_READ_JSON(t, "key", c.serve.key_file, "tls: ");
    FEDPERS_READ_JSON(t, "ca", c.serve.ca_file, "tls: ");
    c.serve.cert_file = Resolve(c.serve.cert_file, config_dir);
    c.serve.key_file = Resolve(c.serve.key_file, config_dir);
    c.serve.ca_file = Resolve(c.serve.ca_file, config_dir);
  } else if (!c.serve.insecure) {
    return absl::InvalidArgumentError("serve config needs \"tls\": {cert, key, ca} (or \"insecure\": true)");
  }
  FEDPERS_READ_JSON(j, "stage_timeout_ms", c.runtime.stage_timeout_ms, "");
  FEDPERS_READ_JSON(j, "round_interval_ms", c.runtime.round_interval_ms, "");
  FEDPERS_READ_JSON(j, "max_rounds", c.runtime.max_rounds, "");
  FEDPERS_READ_JSON(j, "liveness_timeout_ms", c.runtime.liveness_timeout_ms, "");
  FEDPERS_READ_JSON(j, "start_paused", c.runtime.start_paused, "");
  FEDPERS_READ_JSON(j, "admin_page_bytes", c.runtime.admin_page_bytes, "");
  RoundSettings& r = c.runtime.round;
  if (j.contains("round")) {
    const Json& rj = j["round"];
    if (absl::Status s = CheckOnlyKeys(
            rj,
            {"clients_per_round", "min_clients", "ring_bits", "clip_norm", "noise_multiplier",
             "central_noise", "rotate", "threshold", "strategy", "server_learning_rate", "delta",
             "epsilon_budget", "epsilon_budget_against_coordinator", "seed", "secure_aggregation"},
            "\"round\"");
        !s.ok()) {
      return s;
    }
    FEDPERS_READ_JSON(rj, "clients_per_round", r.clients_per_round, "round: ");
    FEDPERS_READ_JSON(rj, "min_clients", r.min_clients, "round: ");
    FEDPERS_READ_JSON(rj, "ring_bits", r.ring_bits, "round: ");
    FEDPERS_READ_JSON(rj, "clip_norm", r.clip_norm, "round: ");
    FEDPERS_READ_JSON(rj, "noise_multiplier", r.noise_multiplier, "round: ");
    FEDPERS_READ_JSON(rj, "central_noise", r.central_noise, "round: ");
    FEDPERS_READ_JSON(rj, "rotate", r.rotate, "round: ");
    FEDPERS_READ_JSON(rj, "secure_aggregation", r.secure_aggregation, "round: ");
    FEDPERS_READ_JSON(rj, "threshold", r.threshold, "round: ");
    FEDPERS_READ_JSON(rj, "strategy", r.strategy.name, "round: ");
    FEDPERS_READ_JSON(rj, "server_learning_rate", r.strategy.server_learning_rate, "round: ");
    FEDPERS_READ_JSON(rj, "delta", r.delta, "round: ");
    for (const auto& [key, budget] :
         {std::pair{"epsilon_budget", &r.epsilon_budget},
          std::pair{"epsilon_budget_against_coordinator", &r.epsilon_budget_against_coordinator}}) {
      if (!rj.contains(key)) continue;
      absl::StatusOr<double> parsed = BudgetFromJson(rj[key], key);
      if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrCat("round: ", parsed.status().message()));
      *budget = *parsed;
    }
    FEDPERS_READ_JSON(rj, "seed", r.seed, "round: ");
  }
  if (!j.contains("base")) return absl::InvalidArgumentError("serve config needs \"base\" (the base model directory)");
  FEDPERS_READ_JSON(j, "base", base, "");
  if (base.empty())
    return absl::InvalidArgumentError("serve config \"base\" is empty (the base model directory)");
  base = Resolve(base, config_dir);
  absl::StatusOr<std::string> model_json = ReadFileToString(base + "/config.json");
  if (!model_json.ok()) return absl::NotFoundError(absl::StrCat("base model: ", model_json.status().message()));
  absl::StatusOr<ModelConfig> model = ParseModelConfigJson(*model_json);
  if (!model.ok()) return model.status();
  LoraConfig lora;
  if (j.contains("lora")) {
    absl::StatusOr<LoraConfig> parsed = ParseLoraConfigJson(j["lora"].dump());
    if (!parsed.ok()) return parsed.status();
    lora = *parsed;
  }
  absl::StatusOr<FlatLayout> layout = GlobalAdapterLayout(*model, lora);
  if (!layout.ok()) return layout.status();
  // The coordinator holds the global adapter, a round's sum and mean and a
  // strategy's two moments: about five float32 copies.
  const double adapter_bytes = 4.0 * static_cast<double>(layout->total_size());
  if (const int64_t available = AvailableMemoryBytes();
      available > 0 && 5 * adapter_bytes > static_cast<double>(available)) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("base model %s: its global adapter of %d values needs about %.1f GiB in the "
                        "coordinator, more than the %.1f "
                        "GiB of memory available (a smaller model or a lower global_rank)",
                        base, layout->total_size(), 5 * adapter_bytes / (1 << 30),
                        static_cast<double>(available) / (1 << 30)));
  }
  c.layout = *layout;
  absl::StatusOr<std::vector<float>> initial = InitialGlobalAdapter(*model, lora);
  if (!initial.ok()) return initial.status();
  if (lora.train_global_a) r.initial_global = std::move(*initial);
  if (absl::Status s = c.runtime.Validate(); !s.ok()) return s;
  // A deployment's clock is real: beyond a week a timeout is a typo (and
  // stage deadlines of years would hang a round on one silent client).
  constexpr int64_t kWeekMs = int64_t{7} * 24 * 3600 * 1000;
  for (auto [name, ms] : {std::pair<const char*, int64_t>{"stage_timeout_ms", c.runtime.stage_timeout_ms},
                          {"liveness_timeout_ms", c.runtime.liveness_timeout_ms},
                          {"round_interval_ms", c.runtime.round_interval_ms}}) {
    if (ms > kWeekMs) {
      return absl::InvalidArgumentError(absl::StrCat("serve config \"", name, "\" must be at most ", kWeekMs,
                                                     " (a week), got ", ms));
    }
  }
  if (absl::Status s = CheckRoundsCanOpen(r, static_cast<size_t>(c.layout.total_size())); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("serve config \"round\": ", s.message()));
  }
  return c;
}

}  // namespace fedpers
