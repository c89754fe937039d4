#include "common/model/peft_export.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

constexpr const char* kPeftPrefix = "base_model.model.";

absl::Status AddTensor(SafetensorsWriter& writer, const std::string& name, const torch::Tensor& t) {
  torch::Tensor c = t.detach().to(torch::kFloat32).contiguous();
  return writer.AddFloat(name, c.sizes().vec(),
                         std::span<const float>(c.data_ptr<float>(), static_cast<size_t>(c.numel())));
}

// The module path of a LoRA module, e.g. "transformer.h.0.attn.c_attn".
std::vector<std::string> ModulePaths(Gpt2LmHead& model) {
  std::vector<std::string> out;
  for (int64_t l = 0; l < model->config().n_layer; ++l) {
    for (const char* t : kLoraTargets) {
      const auto& targets = model->lora_config().targets;
      if (std::find(targets.begin(), targets.end(), t) != targets.end()) {
        out.push_back(absl::StrCat("transformer.h.", l, ".", t));
      }
    }
  }
  return out;
}

}  // namespace

absl::Status ExportPeftAdapter(Gpt2LmHead& model, PeftExportKind kind, const std::string& dir,
                               const std::string& base_model) {
  const LoraConfig& lora = model->lora_config();
  if (!lora.global_enabled) return absl::FailedPreconditionError("PEFT export needs the global branch");
  if (kind == PeftExportKind::kGlobalPlusResidual && !lora.residual_enabled) {
    return absl::FailedPreconditionError("PEFT export of global+residual needs the residual branch");
  }
  std::vector<std::string> paths = ModulePaths(model);
  auto& modules = model->lora_modules();
  if (paths.size() != modules.size()) return absl::InternalError("LoRA module list out of sync");
  SafetensorsWriter writer;
  int64_t rank = lora.global_rank;
  double alpha = lora.global_alpha;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < modules.size(); ++i) {
    LoraConv1D& m = modules[i];
    torch::Tensor a = m->lora_A_global, b = m->lora_B_global;
    if (kind == PeftExportKind::kGlobalPlusResidual) {
      a = torch::cat({m->lora_A_global, m->lora_A_residual}, 0);
      b = torch::cat({m->lora_B_global * lora.global_scale(), m->lora_B_residual * lora.residual_scale()}, 1);
    }
    const std::string base = kPeftPrefix + paths[i];
    FEDPERS_RETURN_IF_ERROR(AddTensor(writer, base + ".lora_A.weight", a));
    FEDPERS_RETURN_IF_ERROR(AddTensor(writer, base + ".lora_B.weight", b));
  }
  if (kind == PeftExportKind::kGlobalPlusResidual) {
    rank = lora.global_rank + lora.residual_rank;
    alpha = static_cast<double>(rank);  // scaling 1: the branch scales live in B
  }
  writer.SetMetadata("format", "pt");
  nlohmann::ordered_json config;
  config["peft_type"] = "LORA";
  config["task_type"] = "CAUSAL_LM";
  config["base_model_name_or_path"] = base_model;
  config["r"] = rank;
  config["lora_alpha"] = alpha;
  config["target_modules"] = lora.targets;
  config["fan_in_fan_out"] = true;
  config["lora_dropout"] = 0.0;
  config["bias"] = "none";
  config["use_rslora"] = false;
  config["use_dora"] = false;
  config["inference_mode"] = true;
  config["init_lora_weights"] = true;
  config["modules_to_save"] = nullptr;
  config["revision"] = nullptr;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", dir, "': ", ec.message()));
  FEDPERS_RETURN_IF_ERROR(writer.WriteFile(dir + "/adapter_model.safetensors"));
  return WriteFileAtomically(dir + "/adapter_config.json", config.dump(2) + "\n");
}

absl::Status MergePeftAdapter(Gpt2LmHead& model, const std::string& dir) {
  FEDPERS_ASSIGN_OR_RETURN(std::string config_text, ReadFileToString(dir + "/adapter_config.json"));
  nlohmann::json config = nlohmann::json::parse(config_text, nullptr, false);
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("PEFT adapter '", dir, "': ", why));
  };
  if (config.is_discarded() || !config.is_object()) return bad("adapter_config.json is not a JSON object");
  if (config.value("peft_type", "") != "LORA") return bad("peft_type is not LORA");
  if (!config.contains("r") || !config["r"].is_number_integer() || config["r"].get<int64_t>() <= 0) {
    return bad("r must be a positive integer");
  }
  if (!config.contains("lora_alpha") || !config["lora_alpha"].is_number()) return bad("lora_alpha missing");
  if (config.value("fan_in_fan_out", false) != true) return bad("GPT-2 Conv1D adapters need fan_in_fan_out: true");
  const int64_t r = config["r"].get<int64_t>();
  const double alpha = config["lora_alpha"].get<double>();
  const double scaling = config.value("use_rslora", false) ? alpha / std::sqrt(double(r)) : alpha / double(r);
  FEDPERS_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::ReadFile(dir + "/adapter_model.safetensors"));
  // Resolve every update first so that a bad file changes nothing.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> updates;
  std::map<std::string, torch::Tensor> weights;
  for (auto& [name, t] : model->BaseParameters()) weights[name] = t;
  size_t consumed = 0;
  for (auto& [name, weight] : weights) {
    if (!name.ends_with(".weight") || weight.dim() != 2 || name.find(".h.") == std::string::npos) continue;
    const std::string module = name.substr(0, name.size() - 7);
    const std::string key_a = kPeftPrefix + module + ".lora_A.weight";
    const std::string key_b = kPeftPrefix + module + ".lora_B.weight";
    if (!file.contains(key_a) && !file.contains(key_b)) continue;
    const int64_t in = weight.size(0), out = weight.size(1);
    absl::StatusOr<std::vector<float>> a = file.ReadAsFloat(key_a, {r, in});
    if (!a.ok()) return bad(a.status().message());
    absl::StatusOr<std::vector<float>> b = file.ReadAsFloat(key_b, {out, r});
    if (!b.ok()) return bad(b.status().message());
    torch::Tensor ta = torch::from_blob(a->data(), {r, in}, torch::kFloat32).clone();
    torch::Tensor tb = torch::from_blob(b->data(), {out, r}, torch::kFloat32).clone();
    updates.emplace_back(weight, tb.mm(ta).t() * scaling);
    consumed += 2;
  }
  if (consumed != file.names().size()) return bad("holds tensors that match no GPT-2 module of this model");
  torch::NoGradGuard no_grad;
  for (auto& [w, delta] : updates) w.add_(delta);
  return absl::OkStatus();
}

}  // namespace fedpers
