// The safetensors format (Hugging Face) on raw byte buffers, without libtorch.
//
// File layout: an 8-byte little-endian header length N, N bytes of JSON
// mapping each tensor name to {dtype, shape, data_offsets} (plus an optional
// "__metadata__" string map), then the tensor bytes. Offsets are relative to
// the end of the header.
#ifndef FEDPERS_COMMON_SAFETENSORS_H_
#define FEDPERS_COMMON_SAFETENSORS_H_

#include "absl/strings/string_view.h"
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedpers {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as spelled in safetensors headers.
absl::string_view DTypeName(DType dtype);
absl::StatusOr<DType> ParseDType(absl::string_view name);
size_t DTypeSize(DType dtype);

struct TensorInfo {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  size_t begin = 0;  // byte offset into the data section
  size_t end = 0;
  int64_t numel() const;
};

// A parsed safetensors buffer. Owns its bytes; immutable after Parse, so it is
// safe to read from several threads.
class SafetensorsFile {
 public:
  // Validates the whole header: header length within the buffer, valid JSON,
  // known dtypes, non-negative shapes, byte ranges that match the shape, lie
  // inside the data section and do not overlap. Errors name the tensor.
  static absl::StatusOr<SafetensorsFile> Parse(std::string bytes);
  static absl::StatusOr<SafetensorsFile> ReadFile(const std::string& path);

  // Tensor names in header order (sorted by name).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  // NotFound if absent.
  absl::StatusOr<TensorInfo> info(const std::string& name) const;
  // The tensor's raw little-endian bytes.
  absl::StatusOr<std::span<const std::byte>> bytes(const std::string& name) const;
  // Copies the tensor converted to float32 (from F32, F16, BF16 or F64), after
  // checking its shape equals `expected_shape` (when non-empty).
  absl::StatusOr<std::vector<float>> ReadAsFloat(
      const std::string& name, const std::vector<int64_t>& expected_shape = {}) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string bytes_;
  size_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Builds a safetensors buffer. Not thread-safe.
class SafetensorsWriter {
 public:
  // Copies `data`; its size must equal numel(shape) * DTypeSize(dtype).
  absl::Status Add(const std::string& name, DType dtype,
                   std::vector<int64_t> shape, std::span<const std::byte> data);
  absl::Status AddFloat(const std::string& name, std::vector<int64_t> shape,
                        std::span<const float> data);
  void SetMetadata(const std::string& key, const std::string& value) {
    metadata_[key] = value;
  }
  // The serialized file; header padded with spaces to a multiple of 8.
  std::string Serialize() const;
  // Serialize() then WriteFileAtomically().
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    std::string data;
  };
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace fedpers

#endif  // FEDPERS_COMMON_SAFETENSORS_H_
