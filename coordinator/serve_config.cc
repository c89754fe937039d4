#include "coordinator/serve_config.h"

#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/host_port.h"
#include "common/model_config.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

using Json = nlohmann::json;

absl::Status OnlyKeys(const Json& j, const std::set<std::string>& allowed, absl::string_view where) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!allowed.count(it.key())) return absl::InvalidArgumentError(absl::StrCat("unknown key '", it.key(), "' in ", where));
  }
  return absl::OkStatus();
}

std::string Resolve(const std::string& path, const std::string& base) {
  if (path.empty() || std::filesystem::path(path).is_absolute()) return path;
  return (std::filesystem::path(base) / path).string();
}

}  // namespace

absl::StatusOr<ServeConfig> ParseServeConfig(const std::string& text, const std::string& config_dir) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("serve config is not a JSON object");
  if (absl::Status s = OnlyKeys(j, {"listen", "state_dir", "base", "lora", "tls", "insecure", "round",
                                    "stage_timeout_ms", "round_interval_ms", "max_rounds", "liveness_timeout_ms", "start_paused"}, "the serve config");
      !s.ok()) {
    return s;
  }
  ServeConfig c;
  try {
    c.serve.listen = j.value("listen", "127.0.0.1:7443");
    if (absl::Status s = CheckHostPort(c.serve.listen, /*allow_port_zero=*/true); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("serve config \"listen\": ", s.message()));
    }
    c.state_dir = Resolve(j.value("state_dir", "coordinator-state"), config_dir);
    c.serve.insecure = j.value("insecure", false);
    if (j.contains("tls")) {
      const Json& t = j["tls"];
      if (absl::Status s = OnlyKeys(t, {"cert", "key", "ca"}, "tls"); !s.ok()) return s;
      c.serve.cert_file = Resolve(t.at("cert").get<std::string>(), config_dir);
      c.serve.key_file = Resolve(t.at("key").get<std::string>(), config_dir);
      c.serve.ca_file = Resolve(t.at("ca").get<std::string>(), config_dir);
    } else if (!c.serve.insecure) {
      return absl::InvalidArgumentError("serve config needs \"tls\": {cert, key, ca} (or \"insecure\": true)");
    }
    c.runtime.stage_timeout_ms = j.value("stage_timeout_ms", int64_t{30000});
    c.runtime.round_interval_ms = j.value("round_interval_ms", int64_t{0});
    c.runtime.max_rounds = j.value("max_rounds", int64_t{0});
    c.runtime.liveness_timeout_ms = j.value("liveness_timeout_ms", int64_t{30000});
    c.runtime.start_paused = j.value("start_paused", false);
    RoundSettings& r = c.runtime.round;
    if (j.contains("round")) {
      const Json& rj = j["round"];
      if (absl::Status s = OnlyKeys(rj, {"clients_per_round", "min_clients", "ring_bits", "clip_norm", "noise_multiplier",
                                         "central_noise", "rotate", "threshold", "strategy", "server_learning_rate",
                                         "delta", "epsilon_budget", "seed", "secure_aggregation"}, "round");
          !s.ok()) {
        return s;
      }
      r.clients_per_round = rj.value("clients_per_round", r.clients_per_round);
      r.min_clients = rj.value("min_clients", r.min_clients);
      r.ring_bits = rj.value("ring_bits", r.ring_bits);
      r.clip_norm = rj.value("clip_norm", r.clip_norm);
      r.noise_multiplier = rj.value("noise_multiplier", r.noise_multiplier);
      r.central_noise = rj.value("central_noise", r.central_noise);
      r.rotate = rj.value("rotate", r.rotate);
      r.secure_aggregation = rj.value("secure_aggregation", r.secure_aggregation);
      r.threshold = rj.value("threshold", r.threshold);
      r.strategy.name = rj.value("strategy", r.strategy.name);
      r.strategy.server_learning_rate = rj.value("server_learning_rate", r.strategy.server_learning_rate);
      r.delta = rj.value("delta", r.delta);
      r.epsilon_budget = rj.value("epsilon_budget", r.epsilon_budget);
      r.seed = rj.value("seed", r.seed);
    }
    const std::string base = Resolve(j.at("base").get<std::string>(), config_dir);
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
    c.layout = *layout;
    absl::StatusOr<std::vector<float>> initial = InitialGlobalAdapter(*model, lora);
    if (!initial.ok()) return initial.status();
    if (lora.train_global_a) r.initial_global = std::move(*initial);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("serve config: ", e.what()));
  }
  if (absl::Status s = c.runtime.round.Validate(); !s.ok()) return s;
  return c;
}

}  // namespace fedpers
