#include "common/model_config.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/atomic_file.h"
#include "common/json_fields.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

using Json = nlohmann::json;

absl::StatusOr<Json> ParseObject(const std::string& text, absl::string_view what) {
  Json j;
  if (absl::Status s = ParseJsonObject(text, what, j); !s.ok()) return s;
  return j;
}

absl::StatusOr<int64_t> PositiveInt(const Json& j, const std::string& key) {
  if (!j.is_number_integer() || j.get<int64_t>() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("config key '", key,
                                                   "' must be a positive integer, got ", j.dump()));
  }
  return j.get<int64_t>();
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  const int64_t d = n_embd, f = inner_dim();
  const int64_t per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d);
  return vocab_size * d + n_positions * d + n_layer * per_layer + 2 * d;
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](int64_t v, absl::string_view key) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(key, " must be positive, got ", v));
    return absl::OkStatus();
  };
  for (auto [v, key] : {std::pair{n_embd, "n_embd"}, {n_layer, "n_layer"}, {n_head, "n_head"},
                        {n_positions, "n_positions"}, {vocab_size, "vocab_size"}}) {
    if (auto s = positive(v, key); !s.ok()) return s;
  }
  // Far beyond any GPT-2-shaped model that fits a machine (GPT-3 175B: 96 x
  // 12,288); within them the parameter count cannot overflow int64.
  for (auto [v, key, most] : {std::tuple{n_embd, "n_embd", int64_t{1} << 16},
                              {n_layer, "n_layer", int64_t{1024}},
                              {n_positions, "n_positions", int64_t{1} << 20},
                              {vocab_size, "vocab_size", int64_t{1} << 24},
                              {n_inner, "n_inner", int64_t{1} << 20}}) {
    if (v > most)
      return absl::InvalidArgumentError(absl::StrCat(key, " must be at most ", most, ", got ", v));
  }
  if (n_embd % n_head != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("n_embd (", n_embd, ") must be divisible by n_head (", n_head, ")"));
  }
  if (n_inner < 0) return absl::InvalidArgumentError("n_inner must be >= 0");
  if (!(layer_norm_epsilon > 0)) return absl::InvalidArgumentError("layer_norm_epsilon must be > 0");
  if (tokenizer == "byte" && vocab_size < 259) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the byte tokenizer needs vocab_size >= 259, got ", vocab_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> NamedModelConfig(const std::string& name) {
  ModelConfig c;
  if (name == "tiny") return c;
  if (name == "small") {
    c.n_layer = 6;
    c.n_embd = 384;
    c.n_head = 6;
    c.n_positions = 256;
    return c;
  }
  if (name == "gpt2") {
    c.n_layer = 12;
    c.n_embd = 768;
    c.n_head = 12;
    c.n_positions = 1024;
    c.vocab_size = 50257;
    c.tokenizer = "";
    return c;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown model config '", name, "' (known: tiny, small, gpt2)"));
}

absl::StatusOr<ModelConfig> ParseModelConfigJson(const std::string& json_text) {
  absl::StatusOr<Json> parsed = ParseObject(json_text, "model config");
  if (!parsed.ok()) return parsed.status();
  const Json& j = *parsed;
  // Keys that do not change the forward pass.
  static const std::set<std::string> kIgnored = {
      "_name_or_path", "architectures", "attn_pdrop", "embd_pdrop", "resid_pdrop",
      "summary_activation", "summary_first_dropout", "summary_proj_to_labels",
      "summary_type", "summary_use_proj", "task_specific_params", "initializer_range",
      "torch_dtype", "transformers_version", "use_cache", "bos_token_id", "eos_token_id",
      "pad_token_id", "id2label", "label2id", "reorder_and_upcast_attn", "output_past",
      "n_ctx", "gradient_checkpointing"};
  ModelConfig c;
  c.tokenizer = "";
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const Json& v = it.value();
    auto set_int = [&](int64_t& field) -> absl::Status {
      absl::StatusOr<int64_t> value = PositiveInt(v, key);
      if (!value.ok()) return value.status();
      field = *value;
      return absl::OkStatus();
    };
    absl::Status s;
    if (key == "n_embd") s = set_int(c.n_embd);
    else if (key == "n_layer") s = set_int(c.n_layer);
    else if (key == "n_head") s = set_int(c.n_head);
    else if (key == "n_positions") s = set_int(c.n_positions);
    else if (key == "vocab_size") s = set_int(c.vocab_size);
    else if (key == "n_inner") {
      if (v.is_null()) c.n_inner = 0;
      else s = set_int(c.n_inner);
    } else if (key == "layer_norm_epsilon") {
      if (!v.is_number() || !(v.get<double>() > 0)) {
        s = absl::InvalidArgumentError("config key 'layer_norm_epsilon' must be a positive number");
      } else {
        c.layer_norm_epsilon = v.get<double>();
      }
    } else if (key == "activation_function") {
      std::string a = v.is_string() ? v.get<std::string>() : "";
      if (a == "gelu_new" || a == "gelu_pytorch_tanh") c.activation = Activation::kGeluTanh;
      else if (a == "gelu") c.activation = Activation::kGeluExact;
      else s = absl::UnimplementedError(absl::StrCat("activation_function ", v.dump(),
                                                     " is not supported (gelu_new, gelu)"));
    } else if (key == "model_type") {
      if (v != "gpt2") {
        s = absl::InvalidArgumentError(absl::StrCat("model_type ", v.dump(), " is not gpt2"));
      }
    } else if (key == "fedpers_tokenizer") {
      if (!v.is_string() || (v != "byte" && v != "")) {
        s = absl::InvalidArgumentError(absl::StrCat("fedpers_tokenizer ", v.dump(), " is not 'byte'"));
      } else {
        c.tokenizer = v.get<std::string>();
      }
    } else if (key == "tie_word_embeddings" || key == "scale_attn_weights") {
      if (v != true) s = absl::UnimplementedError(absl::StrCat(key, "=false is not supported"));
    } else if (key == "scale_attn_by_inverse_layer_idx" || key == "add_cross_attention") {
      if (v != false) s = absl::UnimplementedError(absl::StrCat(key, "=true is not supported"));
    } else if (kIgnored.count(key) == 0) {
      s = absl::InvalidArgumentError(absl::StrCat("unknown model config key '", key, "'"));
    }
    if (!s.ok()) return s;
  }
  if (j.contains("n_ctx") && j["n_ctx"].is_number_integer() && !j.contains("n_positions")) {
    c.n_positions = j["n_ctx"].get<int64_t>();
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  return c;
}

std::string ModelConfigToJson(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["architectures"] = {"GPT2LMHeadModel"};
  j["model_type"] = "gpt2";
  j["n_embd"] = c.n_embd;
  j["n_layer"] = c.n_layer;
  j["n_head"] = c.n_head;
  j["n_positions"] = c.n_positions;
  j["n_ctx"] = c.n_positions;
  j["vocab_size"] = c.vocab_size;
  j["n_inner"] = c.n_inner > 0 ? Json(c.n_inner) : Json(nullptr);
  j["layer_norm_epsilon"] = c.layer_norm_epsilon;
  j["activation_function"] = c.activation == Activation::kGeluTanh ? "gelu_new" : "gelu";
  j["attn_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
  j["resid_pdrop"] = 0.0;
  j["tie_word_embeddings"] = true;
  j["scale_attn_weights"] = true;
  if (c.tokenizer == "byte") {
    j["fedpers_tokenizer"] = "byte";
    j["bos_token_id"] = 256;
    j["eos_token_id"] = 257;
    j["pad_token_id"] = 258;
  }
  return j.dump(2) + "\n";
}

absl::Status LoraConfig::Validate() const {
  if (!global_enabled && !residual_enabled) {
    return absl::InvalidArgumentError("LoRA: both the global and the residual branch are off");
  }
  if (targets.empty()) return absl::InvalidArgumentError("LoRA: no target modules");
  std::set<std::string> seen;
  for (const std::string& t : targets) {
    bool known = std::any_of(std::begin(kLoraTargets), std::end(kLoraTargets),
                             [&](const char* k) { return t == k; });
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "LoRA: unknown target '", t, "' (known: ", absl::StrJoin(kLoraTargets, ", "), ")"));
    }
    if (!seen.insert(t).second) {
      return absl::InvalidArgumentError(absl::StrCat("LoRA: target '", t, "' listed twice"));
    }
  }
  if (global_enabled && global_rank <= 0) return absl::InvalidArgumentError("LoRA: global_rank must be positive");
  if (residual_enabled && residual_rank <= 0) return absl::InvalidArgumentError("LoRA: residual_rank must be positive");
  if (global_rank <= 0 || residual_rank <= 0) return absl::InvalidArgumentError("LoRA: ranks must be positive");
  // The scale alpha / r multiplies float weights: beyond 1e6 it only overflows.
  if (!(global_alpha > 0 && global_alpha <= 1e6) || !(residual_alpha > 0 && residual_alpha <= 1e6)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LoRA: alphas must be in (0, 1e6], got ", global_alpha, " and ", residual_alpha));
  }
  return absl::OkStatus();
}

absl::StatusOr<LoraConfig> ParseLoraConfigJson(const std::string& json_text) {
  absl::StatusOr<Json> parsed = ParseObject(json_text, "LoRA config");
  if (!parsed.ok()) return parsed.status();
  const Json& j = *parsed;
  LoraConfig c;
  if (absl::Status s =
          CheckOnlyKeys(j,
                        {"targets", "global_enabled", "global_rank", "global_alpha", "global_seed",
                         "train_global_a", "residual_enabled", "residual_rank", "residual_alpha"},
                        "the LoRA config");
      !s.ok()) {
    return s;
  }
  FEDPERS_READ_JSON(j, "targets", c.targets, "LoRA: ");
  FEDPERS_READ_JSON(j, "global_enabled", c.global_enabled, "LoRA: ");
  FEDPERS_READ_JSON(j, "global_rank", c.global_rank, "LoRA: ");
  FEDPERS_READ_JSON(j, "global_alpha", c.global_alpha, "LoRA: ");
  FEDPERS_READ_JSON(j, "global_seed", c.global_seed, "LoRA: ");
  FEDPERS_READ_JSON(j, "train_global_a", c.train_global_a, "LoRA: ");
  FEDPERS_READ_JSON(j, "residual_enabled", c.residual_enabled, "LoRA: ");
  FEDPERS_READ_JSON(j, "residual_rank", c.residual_rank, "LoRA: ");
  FEDPERS_READ_JSON(j, "residual_alpha", c.residual_alpha, "LoRA: ");
  std::vector<std::string> ordered;
  for (const char* t : kLoraTargets) {
    if (std::find(c.targets.begin(), c.targets.end(), t) != c.targets.end()) ordered.push_back(t);
  }
  if (absl::Status s = c.Validate(); !s.ok()) return s;
  c.targets = ordered;
  return c;
}

std::string LoraConfigToJson(const LoraConfig& c) {
  nlohmann::ordered_json j;
  j["targets"] = c.targets;
  j["global_enabled"] = c.global_enabled;
  j["global_rank"] = c.global_rank;
  j["global_alpha"] = c.global_alpha;
  j["global_seed"] = c.global_seed;
  if (c.train_global_a) j["train_global_a"] = true;
  j["residual_enabled"] = c.residual_enabled;
  j["residual_rank"] = c.residual_rank;
  j["residual_alpha"] = c.residual_alpha;
  return j.dump(2) + "\n";
}

std::pair<int64_t, int64_t> TargetDims(const ModelConfig& c, const std::string& target) {
  if (target == "attn.c_attn") return {c.n_embd, 3 * c.n_embd};
  if (target == "attn.c_proj") return {c.n_embd, c.n_embd};
  if (target == "mlp.c_fc") return {c.n_embd, c.inner_dim()};
  if (target == "mlp.c_proj") return {c.inner_dim(), c.n_embd};
  return {0, 0};
}

int64_t ActivationBytesLowerBound(const ModelConfig& c, int64_t windows, int64_t seq_len, bool recompute) {
  const double block = 8.0 * c.n_embd + 2.0 * c.inner_dim() + static_cast<double>(c.n_head) * seq_len;
  const double kept = recompute ? static_cast<double>(c.n_layer - 1) * c.n_embd + block : c.n_layer * block;
  const double bytes = 4.0 * static_cast<double>(windows) * seq_len * (kept + 2.0 * c.vocab_size);
  return bytes >= 0x1p62 ? int64_t{1} << 62 : static_cast<int64_t>(bytes);
}

absl::Status CheckTrainingFitsInMemory(const ModelConfig& config, int64_t batch_size, int64_t micro_batch_size,
                                       int64_t seq_len, bool recompute, int64_t available) {
  if (available <= 0) return absl::OkStatus();
  if (seq_len == 0) seq_len = config.n_positions;
  const int64_t windows = micro_batch_size > 0 ? std::min(micro_batch_size, batch_size) : batch_size;
  const int64_t need = ActivationBytesLowerBound(config, windows, seq_len, recompute);
  if (need > available) {
    const int64_t per_window = ActivationBytesLowerBound(config, 1, seq_len, recompute);
    return absl::ResourceExhaustedError(absl::StrFormat(
        "a pass over %d windows of %d tokens keeps at least %.1f GiB of activations, more than the %.1f GiB of "
        "memory available; set micro_batch_size below %d, the most that could fit%s",
        windows, seq_len, static_cast<double>(need) / (1 << 30), static_cast<double>(available) / (1 << 30),
        std::max<int64_t>(1, available / per_window),
        recompute ? "" : ", or recompute activations"));
  }
  // The step's token ids (inputs and targets, int64) are held whole.
  const double ids = 16.0 * static_cast<double>(batch_size) * static_cast<double>(seq_len + 1);
  if (ids > static_cast<double>(available)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "a batch of %d windows of %d tokens needs %.1f GiB for its token ids alone, more than the %.1f GiB of "
        "memory available; lower batch_size",
        batch_size, seq_len, ids / (1 << 30), static_cast<double>(available) / (1 << 30)));
  }
  return absl::OkStatus();
}

absl::Status ValidateLoraForModel(const ModelConfig& model, const LoraConfig& lora) {
  for (const std::string& target : lora.targets) {
    const auto [in, out] = TargetDims(model, target);
    const int64_t limit = std::min(in, out);
    for (auto [enabled, rank, branch] : {std::tuple{lora.global_enabled, lora.global_rank, "global_rank"},
                                         std::tuple{lora.residual_enabled, lora.residual_rank, "residual_rank"}}) {
      if (enabled && rank > limit) {
        return absl::InvalidArgumentError(absl::StrCat(
            "LoRA: ", branch, " ", rank, " exceeds ", limit, ", the smaller dimension of ", target, " (", in, " x ", out,
            "): B A cannot have a higher rank, so the extra rows would only cost memory"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ResolveModelConfig(const std::string& name_or_path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(name_or_path, ec)) {
    absl::StatusOr<std::string> text = ReadFileToString(name_or_path);
    if (!text.ok()) return text.status();
    absl::StatusOr<ModelConfig> config = ParseModelConfigJson(*text);
    if (!config.ok()) {
      return absl::Status(config.status().code(), absl::StrCat("'", name_or_path, "': ", config.status().message()));
    }
    return config;
  }
  // A path that names no file: say so, rather than that it is no known name.
  if (name_or_path.find('/') != std::string::npos || name_or_path.ends_with(".json")) {
    return absl::NotFoundError(
        absl::StrCat("model config file '", name_or_path,
                     "' does not exist (a config is tiny, small, gpt2 or a config.json path)"));
  }
  return NamedModelConfig(name_or_path);
}

}  // namespace fedpers
