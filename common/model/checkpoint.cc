#include "common/model/checkpoint.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/safetensors.h"
#include "common/status.h"

namespace fedpers {
namespace {

std::vector<float> ToFloats(const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

absl::StatusOr<LoraConfig> LoraFromMetadata(const SafetensorsFile& file, const std::string& path) {
  auto it = file.metadata().find("fedpers_lora_config");
  if (it == file.metadata().end()) {
    return absl::InvalidArgumentError(absl::StrCat("adapter '", path, "' has no fedpers_lora_config metadata"));
  }
  return ParseLoraConfigJson(it->second);
}

}  // namespace

absl::Status SaveBaseModel(Gpt2LmHead& model, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", dir, "': ", ec.message()));
  bool was_merged = !model->lora_modules().empty() && model->lora_modules().front()->merged();
  if (was_merged) return absl::FailedPreconditionError("unmerge the adapters before saving the base model");
  SafetensorsWriter writer;
  for (auto& [name, tensor] : model->BaseParameters()) {
    std::vector<float> data = ToFloats(tensor);
    FEDPERS_RETURN_IF_ERROR(writer.AddFloat(name, tensor.sizes().vec(), data));
  }
  writer.SetMetadata("format", "pt");
  FEDPERS_RETURN_IF_ERROR(writer.WriteFile(dir + "/model.safetensors"));
  return WriteFileAtomically(dir + "/config.json", ModelConfigToJson(model->config()));
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir) {
  absl::StatusOr<std::string> text = ReadFileToString(dir + "/config.json");
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("model directory '", dir, "': ", text.status().message()));
  }
  absl::StatusOr<ModelConfig> config = ParseModelConfigJson(*text);
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat("'", dir, "/config.json': ", config.status().message()));
  }
  return config;
}

absl::StatusOr<Gpt2LmHead> LoadBaseModel(const std::string& dir, const LoraConfig& lora) {
  FEDPERS_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  const std::string path = dir + "/model.safetensors";
  FEDPERS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::ReadFile(path));
  FEDPERS_ASSIGN_OR_RETURN(Gpt2LmHead model, CreateGpt2(config, lora));
  // HF files from GPT2Model omit the "transformer." prefix.
  bool prefixed = false;
  for (const std::string& n : file.names()) prefixed |= absl::StartsWith(n, "transformer.");
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : model->BaseParameters()) {
    std::string key = prefixed ? name : name.substr(std::string("transformer.").size());
    absl::StatusOr<std::vector<float>> data = file.ReadAsFloat(key, tensor.sizes().vec());
    if (!data.ok()) {
      return absl::Status(data.status().code(), absl::StrCat("'", path, "': ", data.status().message()));
    }
    const torch::Tensor loaded = torch::from_blob(data->data(), tensor.sizes(), torch::kFloat32);
    // A NaN or infinite weight makes every loss NaN, which training would
    // report as divergence, far from its cause.
    if (!torch::isfinite(loaded).all().item<bool>()) {
      const int64_t bad = (~torch::isfinite(loaded)).sum().item<int64_t>();
      return absl::DataLossError(
          absl::StrCat("'", path, "': tensor '", key, "' holds ", bad, " NaN or infinite value(s)"));
    }
    tensor.copy_(loaded);
    used.insert(key);
  }
  for (const std::string& n : file.names()) {
    if (used.count(n) || n == "lm_head.weight" || absl::EndsWith(n, ".attn.bias") ||
        absl::EndsWith(n, ".attn.masked_bias")) {
      continue;
    }
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': unexpected tensor '", n,
                                                   "' (not part of a GPT-2 model)"));
  }
  if (file.contains("lm_head.weight")) {
    // Tied weights: a stored lm_head must equal wte.
    FEDPERS_ASSIGN_OR_RETURN(std::vector<float> head,
                             file.ReadAsFloat("lm_head.weight", {config.vocab_size, config.n_embd}));
    torch::Tensor h = torch::from_blob(head.data(), {config.vocab_size, config.n_embd}, torch::kFloat32);
    if (!torch::equal(h, model->transformer->wte->weight)) {
      return absl::UnimplementedError(absl::StrCat("'", path, "': lm_head.weight differs from wte (untied heads are not supported)"));
    }
  }
  return model;
}

absl::Status SaveAdapter(Gpt2LmHead& model, LoraBranch branch, const std::string& path) {
  const FlatLayout& layout = model->BranchLayout(branch);
  if (layout.num_tensors() == 0) return absl::FailedPreconditionError("that LoRA branch is not configured");
  std::vector<float> flat = model->FlattenBranch(branch);
  FEDPERS_ASSIGN_OR_RETURN(std::vector<std::span<const float>> parts, layout.Unflatten(flat));
  SafetensorsWriter writer;
  for (size_t i = 0; i < layout.num_tensors(); ++i) {
    FEDPERS_RETURN_IF_ERROR(writer.AddFloat(layout.tensors()[i].name, layout.tensors()[i].shape, parts[i]));
  }
  writer.SetMetadata("fedpers_lora_config", LoraConfigToJson(model->lora_config()));
  writer.SetMetadata("fedpers_branch", branch == LoraBranch::kGlobal ? "global" : "residual");
  writer.SetMetadata("fedpers_layout_fingerprint", absl::StrCat(layout.Fingerprint()));
  return writer.WriteFile(path);
}

absl::Status LoadAdapter(Gpt2LmHead& model, LoraBranch branch, const std::string& path) {
  FEDPERS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::ReadFile(path));
  FEDPERS_ASSIGN_OR_RETURN(LoraConfig stored, LoraFromMetadata(file, path));
  const LoraConfig& mine = model->lora_config();
  if (branch == LoraBranch::kGlobal &&
      (stored.global_rank != mine.global_rank || stored.global_alpha != mine.global_alpha ||
       stored.global_seed != mine.global_seed || stored.targets != mine.targets)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adapter '", path, "' was trained with a different global LoRA config (rank, alpha, seed or targets)"));
  }
  if (branch == LoraBranch::kResidual &&
      (stored.residual_rank != mine.residual_rank || stored.residual_alpha != mine.residual_alpha ||
       stored.targets != mine.targets)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "adapter '", path, "' was trained with a different residual LoRA config (rank, alpha or targets)"));
  }
  absl::StatusOr<std::vector<float>> flat = model->BranchLayout(branch).FromSafetensors(file);
  if (!flat.ok()) {
    return absl::Status(flat.status().code(), absl::StrCat("adapter '", path, "': ", flat.status().message()));
  }
  return model->LoadBranch(branch, *flat);
}

}  // namespace fedpers
