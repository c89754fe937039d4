#include "common/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/atomic_file.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

constexpr size_t kMaxHeaderBytes = 100u << 20;  // as in the reference reader

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF64: return "F64";
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI64: return "I64";
    case DType::kI32: return "I32";
    case DType::kI16: return "I16";
    case DType::kI8: return "I8";
    case DType::kU8: return "U8";
    case DType::kBool: return "BOOL";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  for (DType d : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64,
                  DType::kI32, DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    if (DTypeName(d) == name) return d;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported safetensors dtype '", name, "'"));
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64: case DType::kI64: return 8;
    case DType::kF32: case DType::kI32: return 4;
    case DType::kF16: case DType::kBF16: case DType::kI16: return 2;
    case DType::kI8: case DType::kU8: case DType::kBool: return 1;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::ReadFile(const std::string& path) {
  FEDPERS_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  absl::StatusOr<SafetensorsFile> parsed = Parse(std::move(bytes));
  if (!parsed.ok()) {
    return absl::Status(parsed.status().code(),
                        absl::StrCat("safetensors file '", path, "': ", parsed.status().message()));
  }
  return parsed;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(std::string bytes) {
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat("truncated: ", bytes.size(),
                                            " bytes, fewer than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return absl::DataLossError(absl::StrCat("header length ", header_len, " exceeds the ",
                                            kMaxHeaderBytes, "-byte limit"));
  }
  if (header_len > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat("truncated: header says ", header_len,
                                            " bytes but only ", bytes.size() - 8, " follow"));
  }
  nlohmann::json header = nlohmann::json::parse(
      bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(header_len),
      /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return absl::DataLossError("header is not a JSON object");
  }
  SafetensorsFile file;
  file.data_start_ = 8 + header_len;
  const size_t data_size = bytes.size() - file.data_start_;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return absl::DataLossError("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::DataLossError(absl::StrCat("__metadata__ value of '", m.key(),
                                                  "' is not a string"));
        }
        file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](absl::string_view why) {
      return absl::DataLossError(absl::StrCat("tensor '", name, "': ", why));
    };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets")) {
      return bad("entry needs dtype, shape and data_offsets");
    }
    if (!v["dtype"].is_string()) return bad("dtype is not a string");
    absl::StatusOr<DType> dtype = ParseDType(v["dtype"].get<std::string>());
    if (!dtype.ok()) return bad(dtype.status().message());
    TensorInfo info;
    info.dtype = *dtype;
    if (!v["shape"].is_array()) return bad("shape is not an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) return bad("shape has a negative or non-integer dimension");
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint32_t>::max() * uint64_t{256} / dim) {
        return bad("shape is too large");
      }
      numel *= dim;
      info.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      return bad("data_offsets must be two non-negative integers");
    }
    info.begin = off[0].get<uint64_t>();
    info.end = off[1].get<uint64_t>();
    if (info.end < info.begin) return bad("data_offsets end before they begin");
    if (info.end > data_size) {
      return absl::DataLossError(absl::StrCat("truncated: tensor '", name, "' ends at byte ",
                                              info.end, " of a ", data_size,
                                              "-byte data section"));
    }
    if (info.end - info.begin != numel * DTypeSize(info.dtype)) {
      return bad(absl::StrCat("byte range of ", info.end - info.begin,
                              " does not match shape [", absl::StrJoin(info.shape, ", "),
                              "] of ", DTypeName(info.dtype)));
    }
    ranges.emplace_back(info.begin, info.end);
    file.tensors_.emplace(name, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      return absl::DataLossError("tensor byte ranges overlap");
    }
  }
  file.bytes_ = std::move(bytes);
  return file;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, info] : tensors_) out.push_back(name);
  return out;
}

absl::StatusOr<TensorInfo> SafetensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(absl::StrCat("no tensor named '", name, "'"));
  }
  return it->second;
}

absl::StatusOr<std::span<const std::byte>> SafetensorsFile::bytes(const std::string& name) const {
  FEDPERS_ASSIGN_OR_RETURN(TensorInfo ti, info(name));
  const std::byte* base = reinterpret_cast<const std::byte*>(bytes_.data()) + data_start_;
  return std::span<const std::byte>(base + ti.begin, ti.end - ti.begin);
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadAsFloat(
    const std::string& name, const std::vector<int64_t>& expected_shape) const {
  FEDPERS_ASSIGN_OR_RETURN(TensorInfo ti, info(name));
  if (!expected_shape.empty() && ti.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", name, "' has shape [", absl::StrJoin(ti.shape, ", "), "], expected [",
        absl::StrJoin(expected_shape, ", "), "]"));
  }
  FEDPERS_ASSIGN_OR_RETURN(std::span<const std::byte> raw, bytes(name));
  const size_t n = static_cast<size_t>(ti.numel());
  std::vector<float> out(n);
  switch (ti.dtype) {
    case DType::kF32:
      std::memcpy(out.data(), raw.data(), n * 4);
      break;
    case DType::kF64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, raw.data() + 8 * i, 8);
        out[i] = static_cast<float>(d);
      }
      break;
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        out[i] = HalfToFloat(h);
      }
      break;
    case DType::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        out[i] = std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
      }
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has dtype ",
                                                     DTypeName(ti.dtype),
                                                     ", not a floating-point type"));
  }
  return out;
}

absl::Status SafetensorsWriter::Add(const std::string& name, DType dtype,
                                    std::vector<int64_t> shape,
                                    std::span<const std::byte> data) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(absl::StrCat("invalid tensor name '", name, "'"));
  }
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': negative dimension"));
    numel *= d;
  }
  if (static_cast<size_t>(numel) * DTypeSize(dtype) != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "': ", data.size(),
                                                   " bytes do not match its shape"));
  }
  if (entries_.count(name)) {
    return absl::AlreadyExistsError(absl::StrCat("tensor '", name, "' added twice"));
  }
  entries_[name] = Entry{dtype, std::move(shape),
                         std::string(reinterpret_cast<const char*>(data.data()), data.size())};
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddFloat(const std::string& name, std::vector<int64_t> shape,
                                         std::span<const float> data) {
  return Add(name, DType::kF32, std::move(shape), std::as_bytes(data));
}

std::string SafetensorsWriter::Serialize() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  size_t offset = 0;
  for (const auto& [name, e] : entries_) {
    header[name] = {{"dtype", std::string(DTypeName(e.dtype))},
                    {"shape", e.shape},
                    {"data_offsets", {offset, offset + e.data.size()}}};
    offset += e.data.size();
  }
  std::string json = header.dump();
  while ((8 + json.size()) % 8 != 0) json.push_back(' ');
  std::string out(8, '\0');
  uint64_t len = json.size();
  std::memcpy(out.data(), &len, 8);
  out += json;
  out.reserve(out.size() + offset);
  for (const auto& [name, e] : entries_) out += e.data;
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  return WriteFileAtomically(path, Serialize());
}

}  // namespace fedpers
