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
// `name_or_path`: an HF config.json file when one exists at that path, else a
// named configuration. Errors name the file or the unknown name.
absl::StatusOr<ModelConfig> ResolveModelConfig(const std::string& name_or_path);

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

// A lower bound on the bytes of activations one forward/backward pass over
// `windows` windows of `seq_len` tokens keeps (float32): per token and block
// at least the layer norms' outputs, qkv, the attention output, the MLP's two
// inner-wide values and the residual stream (8 n_embd + 2 inner), plus the
// attention probabilities (n_head x seq_len), and the logits with their
// softmax. With `recompute`, every block but one keeps only its input. The
// trainer refuses a pass that cannot fit; being a lower bound, the check
// never refuses one that could.
int64_t ActivationBytesLowerBound(const ModelConfig& config, int64_t windows, int64_t seq_len, bool recompute);

// ResourceExhausted, naming the figure and the setting to change, when a
// training step of `batch_size` windows (passes of `micro_batch_size`, 0:
// the whole batch) cannot fit in `available` bytes by the lower bound above
// or by its token ids; OK when `available` <= 0 (unknown). A seq_len of 0
// means n_positions.
absl::Status CheckTrainingFitsInMemory(const ModelConfig& config, int64_t batch_size, int64_t micro_batch_size,
                                       int64_t seq_len, bool recompute, int64_t available);

// (in_features, out_features) of a target projection of `config`.
std::pair<int64_t, int64_t> TargetDims(const ModelConfig& config, const std::string& target);

// InvalidArgument when an enabled branch's rank exceeds min(in_features,
// out_features) of a projection it targets: B A has rank at most that, so a
// larger rank adds parameters (and memory per user) but nothing the adapter
// can express. Assumes both configs passed their own Validate.
absl::Status ValidateLoraForModel(const ModelConfig& model, const LoraConfig& lora);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_CONFIG_H_
