// The canonical flat-vector layout of an adapter: an ordered list of
// (name, shape). The global adapter's B factors, flattened in this order, are
// the vector that clients clip, noise, encode and securely aggregate; the
// coordinator reads the same layout without libtorch.
#ifndef FEDPERS_COMMON_FLAT_LAYOUT_H_
#define FEDPERS_COMMON_FLAT_LAYOUT_H_

#include "absl/strings/string_view.h"
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/safetensors.h"

namespace fedpers {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t numel() const;
  bool operator==(const TensorSpec&) const = default;
};

// Immutable after creation; safe to share between threads.
class FlatLayout {
 public:
  FlatLayout() = default;
  // InvalidArgument on duplicate or empty names and non-positive dimensions.
  static absl::StatusOr<FlatLayout> Create(std::vector<TensorSpec> tensors);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  size_t num_tensors() const { return tensors_.size(); }
  // Offset of tensor i in the flat vector.
  int64_t offset(size_t i) const { return offsets_[i]; }
  int64_t total_size() const { return total_size_; }
  // Index of `name`, or NotFound.
  absl::StatusOr<size_t> IndexOf(const std::string& name) const;
  // 64-bit FNV-1a fingerprint of names and shapes: peers compare it before
  // exchanging vectors.
  uint64_t Fingerprint() const;
  bool operator==(const FlatLayout& o) const { return tensors_ == o.tensors_; }

  // Concatenates the named float tensors in layout order. Every tensor must be
  // present with exactly its numel; extra names are an error.
  absl::StatusOr<std::vector<float>> Flatten(
      const std::map<std::string, std::span<const float>>& tensors) const;
  // Splits `flat` (of total_size()) into views, one per tensor, in layout order.
  absl::StatusOr<std::vector<std::span<const float>>> Unflatten(std::span<const float> flat) const;

  // Writes `flat` as a safetensors file (one F32 tensor per entry).
  absl::StatusOr<std::string> ToSafetensors(std::span<const float> flat) const;
  // Reads a flat vector back from safetensors; every tensor of the layout must
  // be present with its shape.
  absl::StatusOr<std::vector<float>> FromSafetensors(const SafetensorsFile& file) const;

 private:
  std::vector<TensorSpec> tensors_;
  std::vector<int64_t> offsets_;
  int64_t total_size_ = 0;
};

// Name of a LoRA factor in fedpers' own parameter naming, e.g.
// "transformer.h.0.attn.c_attn.lora_B_global".
std::string LoraParamName(int64_t layer, const std::string& target, absl::string_view factor);

// The trainable part of the global adapter (every B_g) in canonical order:
// layer-major, targets in kLoraTargets order. Shapes are [out, r_g].
absl::StatusOr<FlatLayout> GlobalAdapterLayout(const ModelConfig& model, const LoraConfig& lora);
// The residual adapter (A_u [r_u, in], then B_u [out, r_u] per target).
absl::StatusOr<FlatLayout> ResidualAdapterLayout(const ModelConfig& model, const LoraConfig& lora);
// The global adapter every federation starts from, in GlobalAdapterLayout
// order: B_g = 0, and with train_global_a the seeded A_g the model derives.
absl::StatusOr<std::vector<float>> InitialGlobalAdapter(const ModelConfig& model, const LoraConfig& lora);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_FLAT_LAYOUT_H_
