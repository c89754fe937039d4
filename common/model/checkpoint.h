// Model and adapter files.
//
// A model directory holds an HF-compatible `config.json` and
// `model.safetensors` (GPT2LMHeadModel names; lm_head tied, so not stored).
// An adapter file is a safetensors file of one branch's flat layout, with
// the LoRA config in its metadata.
#ifndef FEDPERS_COMMON_MODEL_CHECKPOINT_H_
#define FEDPERS_COMMON_MODEL_CHECKPOINT_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/model/gpt2.h"

namespace fedpers {

// Writes config.json and model.safetensors into `dir` (created if missing),
// each atomically.
absl::Status SaveBaseModel(Gpt2LmHead& model, const std::string& dir);

// Reads `dir`/config.json and `dir`/model.safetensors (HF GPT-2 files load:
// names with or without the "transformer." prefix, attention-mask buffers
// ignored, F16/BF16 converted). Every base tensor must be present with its
// exact shape; errors name the file and tensor. LoRA branches per `lora`.
absl::StatusOr<Gpt2LmHead> LoadBaseModel(const std::string& dir, const LoraConfig& lora);
// Reads only config.json.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

// Saves / loads one LoRA branch (global: B_g; residual: A_u and B_u).
absl::Status SaveAdapter(Gpt2LmHead& model, LoraBranch branch, const std::string& path);
// The file's LoRA metadata (ranks, alphas, targets, seed) must match the
// model's; otherwise InvalidArgument naming the mismatch.
absl::Status LoadAdapter(Gpt2LmHead& model, LoraBranch branch, const std::string& path);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_CHECKPOINT_H_
