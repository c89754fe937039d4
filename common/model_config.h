// Model and adapter configurations, readable without libtorch (the
// coordinator needs the adapter layout but never links libtorch).
#ifndef FEDPERS_COMMON_MODEL_CONFIG_H_
#define FEDPERS_COMMON_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers {

enum class Activation { kGeluTanh, kGeluExact };

// GPT-2 hyper-parameters under Hugging Face's config.json key names.
struct ModelConfig {
  int64_t n_embd = 256;
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_positions = 128;
  int64_t vocab_size = 259;  // 256 bytes + BOS, EOS, PAD
  int64_t n_inner = 0;       // 0: 4 * n_embd, as HF's null
  double layer_norm_epsilon = 1e-5;
  Activation activation = Activation::kGeluTanh;
  // "byte" for fedpers' byte tokenizer, "" for an external (e.g. HF BPE) one.
  std::string tokenizer = "byte";

  int64_t inner_dim() const { return n_inner > 0 ? n_inner : 4 * n_embd; }
  int64_t head_dim() const { return n_embd / n_head; }
  // Parameters of the base model (embeddings included, lm_head tied).
  int64_t NumParameters() const;
  // InvalidArgument naming the offending field when inconsistent.
  absl::Status Validate() const;
};

// The built-in named configurations: "tiny" (4 x 256, 4 heads, 128 positions,
// byte vocabulary), "small" (6 x 384), "gpt2" (HF gpt2 124M shape).
absl::StatusOr<ModelConfig> NamedModelConfig(const std::string& name);

// Parses an HF GPT-2 config.json. Keys that do not change the forward pass
// (dropouts, ids, bookkeeping) are accepted and ignored; keys that would
// change it to something fedpers does not implement, and unknown keys, are
// errors that name the key.
absl::StatusOr<ModelConfig> ParseModelConfigJson(const std::string& json_text);
// Writes an HF-compatible GPT-2 config.json.
std::string ModelConfigToJson(const ModelConfig& config);

// The projections a LoRA branch can target, in canonical order.
inline constexpr const char* kLoraTargets[] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                               "mlp.c_proj"};

// Dual-LoRA configuration: a global branch (A frozen, from `global_seed`) and
// a per-user residual branch.
struct LoraConfig {
  std::vector<std::string> targets = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  bool global_enabled = true;
  int64_t global_rank = 8;
  double global_alpha = 16;
  uint64_t global_seed = 0x5eedf00dULL;
  // The `fedavg-lora` baseline: A_g is trained and aggregated too (it starts
  // from the same seeded values). Averaging both factors is not the average
  // of the clients' model changes (mean(B) mean(A) != mean(B A)), which is
  // why fedpers freezes A_g by default.
  bool train_global_a = false;
  bool residual_enabled = true;
  int64_t residual_rank = 4;
  double residual_alpha = 8;

  double global_scale() const { return global_alpha / static_cast<double>(global_rank); }
  double residual_scale() const { return residual_alpha / static_cast<double>(residual_rank); }
  // Targets sorted into canonical order; InvalidArgument for unknown or
  // duplicate targets and non-positive ranks.
  absl::Status Validate() const;
};

absl::StatusOr<LoraConfig> ParseLoraConfigJson(const std::string& json_text);
std::string LoraConfigToJson(const LoraConfig& config);

// (in_features, out_features) of a target projection of `config`.
std::pair<int64_t, int64_t> TargetDims(const ModelConfig& config, const std::string& target);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_CONFIG_H_
