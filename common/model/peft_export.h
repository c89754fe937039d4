// Hugging Face PEFT adapter directories (adapter_model.safetensors +
// adapter_config.json) for GPT-2's Conv1D modules (fan_in_fan_out: true).
#ifndef FEDPERS_COMMON_MODEL_PEFT_EXPORT_H_
#define FEDPERS_COMMON_MODEL_PEFT_EXPORT_H_

#include <string>

#include "absl/status/status.h"
#include "common/model/gpt2.h"

namespace fedpers {

enum class PeftExportKind {
  kGlobal,              // rank r_g, lora_alpha alpha_g: A_g, B_g
  kGlobalPlusResidual,  // rank r_g + r_u: A = [A_g; A_u], B = [s_g B_g, s_u B_u], alpha = rank
};

// Writes the adapter into `dir` (created if missing). `base_model` is
// recorded as base_model_name_or_path. FailedPrecondition when a branch the
// kind needs is not configured.
absl::Status ExportPeftAdapter(Gpt2LmHead& model, PeftExportKind kind, const std::string& dir,
                               const std::string& base_model);

// Merges a PEFT LoRA adapter into the model's base weights as PEFT's
// merge_and_unload does: W += scaling * (B A)^T with scaling = lora_alpha / r
// (lora_alpha / sqrt(r) under use_rslora). Validates the config and every
// tensor's shape before changing anything.
absl::Status MergePeftAdapter(Gpt2LmHead& model, const std::string& dir);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_PEFT_EXPORT_H_
