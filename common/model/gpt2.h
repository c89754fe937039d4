// GPT-2 decoder with dual LoRA, in libtorch.
//
// Parameter names and layouts follow Hugging Face's GPT2LMHeadModel
// ("transformer.h.0.attn.c_attn.weight" in Conv1D layout [in, out], tied
// lm_head), so an HF model.safetensors loads directly. Every targeted
// projection carries two LoRA branches:
//
//   y = x W0 + b + s_g (x A_g^T) B_g^T + s_u (x A_u^T) B_u^T
//
// A_g is a frozen buffer derived from (global_seed, parameter name) by the
// portable PRG; B_g, A_u and B_u are parameters. B_g and B_u start at 0.
#ifndef FEDPERS_COMMON_MODEL_GPT2_H_
#define FEDPERS_COMMON_MODEL_GPT2_H_

#include <torch/torch.h>

#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/flat_layout.h"
#include "common/model_config.h"

namespace fedpers {

enum class LoraBranch { kGlobal, kResidual };

// A GPT-2 Conv1D projection (weight [in, out]) with optional global and
// residual LoRA branches. Not thread-safe.
class LoraConv1DImpl : public torch::nn::Module {
 public:
  // `full_name` is the module's HF path ("transformer.h.0.attn.c_attn"); it
  // seeds A_g. Branches exist only when `lora` enables them and `targeted`.
  LoraConv1DImpl(int64_t in, int64_t out, const std::string& full_name, const LoraConfig& lora,
                 bool targeted);

  torch::Tensor forward(const torch::Tensor& x);

  // Whether the branch exists (configured) / takes part in forward().
  bool has_branch(LoraBranch b) const;
  void set_branch_enabled(LoraBranch b, bool enabled);
  bool branch_enabled(LoraBranch b) const;

  // Folds the enabled branches into weight (for inference); forward() then
  // skips them. Unmerge() restores the exact pre-merge weight. Merging twice
  // or unmerging an unmerged module is a no-op.
  void Merge();
  void Unmerge();
  bool merged() const { return merged_; }
  // W0 + enabled branches, in Conv1D layout, without changing the module.
  torch::Tensor EffectiveWeight() const;

  // Re-derives the residual factors for a new user: A_u from (seed, name) by
  // the portable PRG, B_u = 0.
  void ResetResidual(uint64_t seed);
  // B_g = 0, and A_g re-derived when it is trained (fedavg-lora).
  void ResetGlobal();

  torch::Tensor weight, bias;
  torch::Tensor lora_A_global, lora_B_global;      // [r_g, in] buffer, [out, r_g]
  torch::Tensor lora_A_residual, lora_B_residual;  // [r_u, in], [out, r_u]

 private:
  std::string full_name_;
  int64_t in_, out_;
  double global_scale_ = 0, residual_scale_ = 0;
  uint64_t global_seed_ = 0;
  bool train_global_a_ = false;
  bool global_on_ = false, residual_on_ = false;
  bool merged_ = false;
  torch::Tensor unmerged_weight_;
};
TORCH_MODULE(LoraConv1D);

// Causal multi-head self-attention on a fused projection qkv [B, T, 3C]
// (queries, keys, values side by side, heads of C / n_head): returns
// softmax(Q K^T / sqrt(D) + causal mask) V as [B, T, C]. Differentiable.
torch::Tensor CausalSelfAttention(const torch::Tensor& qkv, int64_t n_head);

class Gpt2AttentionImpl : public torch::nn::Module {
 public:
  Gpt2AttentionImpl(const ModelConfig& c, const LoraConfig& lora, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x);
  LoraConv1D c_attn{nullptr}, c_proj{nullptr};

 private:
  int64_t n_head_, n_embd_;
};
TORCH_MODULE(Gpt2Attention);

class Gpt2MlpImpl : public torch::nn::Module {
 public:
  Gpt2MlpImpl(const ModelConfig& c, const LoraConfig& lora, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x);
  LoraConv1D c_fc{nullptr}, c_proj{nullptr};

 private:
  Activation activation_;
};
TORCH_MODULE(Gpt2Mlp);

class Gpt2BlockImpl : public torch::nn::Module {
 public:
  Gpt2BlockImpl(const ModelConfig& c, const LoraConfig& lora, int64_t layer);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Gpt2Attention attn{nullptr};
  Gpt2Mlp mlp{nullptr};
};
TORCH_MODULE(Gpt2Block);

class Gpt2TransformerImpl : public torch::nn::Module {
 public:
  Gpt2TransformerImpl(const ModelConfig& c, const LoraConfig& lora);
  // Final hidden states [B, T, C] for token ids [B, T].
  torch::Tensor forward(const torch::Tensor& ids);
  // When on, a forward pass that records gradients keeps only each block's
  // input and recomputes the block's activations in backward: activation
  // memory of one block instead of n_layer, for one more forward pass of
  // compute. Same gradients (the recompute is the same deterministic ops).
  void set_recompute_activations(bool on) { recompute_activations_ = on; }
  bool recompute_activations() const { return recompute_activations_; }
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  std::vector<Gpt2Block> blocks;

 private:
  bool recompute_activations_ = false;
};
TORCH_MODULE(Gpt2Transformer);

// The language model: transformer plus the tied lm_head. Owns all weights.
// Not thread-safe; one training or inference call at a time.
class Gpt2LmHeadImpl : public torch::nn::Module {
 public:
  explicit Gpt2LmHeadImpl(const ModelConfig& config, const LoraConfig& lora = LoraConfig());

  // Logits [B, T, V] for int64 token ids [B, T] (T <= n_positions).
  torch::Tensor forward(const torch::Tensor& ids);
  // Mean cross-entropy of `targets` [B, T] (PAD targets ignored).
  torch::Tensor Loss(const torch::Tensor& ids, const torch::Tensor& targets);

  const ModelConfig& config() const { return config_; }
  const LoraConfig& lora_config() const { return lora_; }

  // HF-named base parameters (embeddings, layer norms, projections).
  std::vector<std::pair<std::string, torch::Tensor>> BaseParameters();
  // Freezes or unfreezes the base parameters.
  void SetBaseTrainable(bool trainable);
  // Initializes base weights as HF GPT-2 does (N(0, 0.02), scaled residual
  // projections), from torch's RNG (seed it with torch::manual_seed).
  void InitBaseWeights();

  std::vector<LoraConv1D>& lora_modules() { return lora_modules_; }
  void SetBranchEnabled(LoraBranch b, bool enabled);
  // Trainable tensors of a branch, in canonical layout order (global: B_g,
  // or A_g, B_g with train_global_a; residual: A_u, B_u per module).
  std::vector<torch::Tensor> BranchParameters(LoraBranch b);
  // The canonical flat layout of a branch (same as GlobalAdapterLayout /
  // ResidualAdapterLayout).
  const FlatLayout& BranchLayout(LoraBranch b) const;
  // The branch flattened in layout order.
  std::vector<float> FlattenBranch(LoraBranch b);
  // Loads a flat vector of the branch's layout size; InvalidArgument otherwise.
  absl::Status LoadBranch(LoraBranch b, std::span<const float> flat);
  // Residual A_u re-derived from `seed`, B_u = 0.
  void ResetResidual(uint64_t seed);
  void ResetGlobal();

  void Merge();
  void Unmerge();

  Gpt2Transformer transformer{nullptr};

 private:
  ModelConfig config_;
  LoraConfig lora_;
  std::vector<LoraConv1D> lora_modules_;  // layer-major, canonical target order
  FlatLayout global_layout_, residual_layout_;
};
TORCH_MODULE(Gpt2LmHead);

// Builds a model, checking both configurations first.
absl::StatusOr<Gpt2LmHead> CreateGpt2(const ModelConfig& config, const LoraConfig& lora);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_GPT2_H_
