#include "common/flat_layout.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/portable_prg.h"
#include "common/status.h"

namespace fedpers {

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<FlatLayout> FlatLayout::Create(std::vector<TensorSpec> tensors) {
  FlatLayout layout;
  std::set<std::string> names;
  for (const TensorSpec& t : tensors) {
    if (t.name.empty()) return absl::InvalidArgumentError("layout: empty tensor name");
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("layout: tensor '", t.name, "' listed twice"));
    }
    if (t.shape.empty()) return absl::InvalidArgumentError(absl::StrCat("layout: tensor '", t.name, "' has no shape"));
    for (int64_t d : t.shape) {
      if (d <= 0) {
        return absl::InvalidArgumentError(absl::StrCat("layout: tensor '", t.name,
                                                       "' has a non-positive dimension"));
      }
    }
    layout.offsets_.push_back(layout.total_size_);
    layout.total_size_ += t.numel();
  }
  layout.tensors_ = std::move(tensors);
  return layout;
}

absl::StatusOr<size_t> FlatLayout::IndexOf(const std::string& name) const {
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].name == name) return i;
  }
  return absl::NotFoundError(absl::StrCat("layout has no tensor '", name, "'"));
}

uint64_t FlatLayout::Fingerprint() const {
  uint64_t h = 0xcbf29ce484222325ULL;
  auto mix = [&h](const void* data, size_t n) {
    const unsigned char* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ULL;
    }
  };
  for (const TensorSpec& t : tensors_) {
    mix(t.name.data(), t.name.size() + 0);
    const char sep = 0;
    mix(&sep, 1);
    for (int64_t d : t.shape) {
      uint64_t le = static_cast<uint64_t>(d);
      unsigned char b[8];
      for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(le >> (8 * i));
      mix(b, 8);
    }
  }
  return h;
}

absl::StatusOr<std::vector<float>> FlatLayout::Flatten(
    const std::map<std::string, std::span<const float>>& tensors) const {
  if (tensors.size() != tensors_.size()) {
    for (const auto& [name, data] : tensors) {
      if (!IndexOf(name).ok()) {
        return absl::InvalidArgumentError(absl::StrCat("flatten: tensor '", name, "' is not in the layout"));
      }
    }
  }
  std::vector<float> flat(static_cast<size_t>(total_size_));
  for (size_t i = 0; i < tensors_.size(); ++i) {
    auto it = tensors.find(tensors_[i].name);
    if (it == tensors.end()) {
      return absl::InvalidArgumentError(absl::StrCat("flatten: tensor '", tensors_[i].name, "' is missing"));
    }
    if (static_cast<int64_t>(it->second.size()) != tensors_[i].numel()) {
      return absl::InvalidArgumentError(absl::StrCat("flatten: tensor '", tensors_[i].name, "' has ",
                                                     it->second.size(), " elements, expected ",
                                                     tensors_[i].numel()));
    }
    std::memcpy(flat.data() + offsets_[i], it->second.data(), it->second.size() * sizeof(float));
  }
  return flat;
}

absl::StatusOr<std::vector<std::span<const float>>> FlatLayout::Unflatten(
    std::span<const float> flat) const {
  if (static_cast<int64_t>(flat.size()) != total_size_) {
    return absl::InvalidArgumentError(absl::StrCat("unflatten: vector has ", flat.size(),
                                                   " elements, the layout needs ", total_size_));
  }
  std::vector<std::span<const float>> out;
  out.reserve(tensors_.size());
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.push_back(flat.subspan(static_cast<size_t>(offsets_[i]), static_cast<size_t>(tensors_[i].numel())));
  }
  return out;
}

absl::StatusOr<std::string> FlatLayout::ToSafetensors(std::span<const float> flat) const {
  FEDPERS_ASSIGN_OR_RETURN(std::vector<std::span<const float>> parts, Unflatten(flat));
  SafetensorsWriter writer;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    FEDPERS_RETURN_IF_ERROR(writer.AddFloat(tensors_[i].name, tensors_[i].shape, parts[i]));
  }
  writer.SetMetadata("fedpers_layout_fingerprint", absl::StrCat(Fingerprint()));
  return writer.Serialize();
}

absl::StatusOr<std::vector<float>> FlatLayout::FromSafetensors(const SafetensorsFile& file) const {
  std::vector<float> flat(static_cast<size_t>(total_size_));
  for (size_t i = 0; i < tensors_.size(); ++i) {
    FEDPERS_ASSIGN_OR_RETURN(std::vector<float> t, file.ReadAsFloat(tensors_[i].name, tensors_[i].shape));
    std::copy(t.begin(), t.end(), flat.begin() + offsets_[i]);
  }
  return flat;
}

std::string LoraParamName(int64_t layer, const std::string& target, absl::string_view factor) {
  return absl::StrCat("transformer.h.", layer, ".", target, ".", factor);
}

namespace {

// Layout of one branch: `specs_for(in, out, layer, target)` appends that
// module's tensors; modules visited layer-major in kLoraTargets order.
template <typename SpecsFor>
absl::StatusOr<FlatLayout> BranchLayout(const ModelConfig& model, const LoraConfig& lora, bool enabled,
                                        absl::string_view branch, SpecsFor specs_for) {
  FEDPERS_RETURN_IF_ERROR(model.Validate());
  FEDPERS_RETURN_IF_ERROR(lora.Validate());
  FEDPERS_RETURN_IF_ERROR(ValidateLoraForModel(model, lora));
  if (!enabled) {
    return absl::FailedPreconditionError(absl::StrCat("the ", branch, " LoRA branch is off: no ", branch, " adapter"));
  }
  std::vector<TensorSpec> specs;
  for (int64_t l = 0; l < model.n_layer; ++l) {
    for (const char* t : kLoraTargets) {
      if (std::find(lora.targets.begin(), lora.targets.end(), t) == lora.targets.end()) continue;
      auto [in, out] = TargetDims(model, t);
      specs_for(in, out, LoraParamName(l, t, ""), specs);
    }
  }
  return FlatLayout::Create(std::move(specs));
}

}  // namespace

absl::StatusOr<FlatLayout> GlobalAdapterLayout(const ModelConfig& model, const LoraConfig& lora) {
  return BranchLayout(model, lora, lora.global_enabled, "global",
                      [&](int64_t in, int64_t out, const std::string& prefix, std::vector<TensorSpec>& specs) {
                        if (lora.train_global_a) specs.push_back({prefix + "lora_A_global", {lora.global_rank, in}});
                        specs.push_back({prefix + "lora_B_global", {out, lora.global_rank}});
                      });
}

absl::StatusOr<std::vector<float>> InitialGlobalAdapter(const ModelConfig& model, const LoraConfig& lora) {
  FEDPERS_ASSIGN_OR_RETURN(FlatLayout layout, GlobalAdapterLayout(model, lora));
  std::vector<float> flat(static_cast<size_t>(layout.total_size()), 0.0f);
  for (size_t i = 0; i < layout.num_tensors(); ++i) {
    const TensorSpec& t = layout.tensors()[i];
    if (!absl::EndsWith(t.name, ".lora_A_global")) continue;
    // Seeded by the parameter's full name, exactly as the model derives it.
    std::vector<float> a = DeriveLoraA(lora.global_seed, t.name, t.shape[0], t.shape[1]);
    std::copy(a.begin(), a.end(), flat.begin() + layout.offset(i));
  }
  return flat;
}

absl::StatusOr<FlatLayout> ResidualAdapterLayout(const ModelConfig& model, const LoraConfig& lora) {
  return BranchLayout(model, lora, lora.residual_enabled, "residual",
                      [&](int64_t in, int64_t out, const std::string& prefix, std::vector<TensorSpec>& specs) {
                        specs.push_back({prefix + "lora_A_residual", {lora.residual_rank, in}});
                        specs.push_back({prefix + "lora_B_residual", {out, lora.residual_rank}});
                      });
}

}  // namespace fedpers
