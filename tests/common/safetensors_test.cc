#include "common/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "common/atomic_file.h"

namespace fedpers {
namespace {

std::string Build() {
  SafetensorsWriter w;
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f};
  std::vector<float> b = {42.0f};
  EXPECT_TRUE(w.AddFloat("layer.a", {2, 3}, a).ok());
  EXPECT_TRUE(w.AddFloat("b", {1}, b).ok());
  w.SetMetadata("format", "pt");
  return w.Serialize();
}

TEST(SafetensorsTest, RoundTripsValuesShapesAndMetadata) {
  std::string bytes = Build();
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u) << "header is padded to 8 bytes";
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->names(), (std::vector<std::string>{"b", "layer.a"}));
  absl::StatusOr<std::vector<float>> a = f->ReadAsFloat("layer.a", {2, 3});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, (std::vector<float>{1.5f, -2.0f, 3.25f, 0.0f, 1e-30f, -7.0f}));
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->info("b")->shape, std::vector<int64_t>{1});
}

TEST(SafetensorsTest, FileRoundTripIsByteIdentical) {
  const std::string path = ::testing::TempDir() + "/st_roundtrip.safetensors";
  SafetensorsWriter w;
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.37f - 100.0f;
  ASSERT_TRUE(w.AddFloat("v", {10, 100}, v).ok());
  ASSERT_TRUE(w.WriteFile(path).ok());
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::ReadFile(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(*f->ReadAsFloat("v"), v);
  EXPECT_EQ(*ReadFileToString(path), w.Serialize());
}

TEST(SafetensorsTest, ConvertsHalfAndBfloat16) {
  SafetensorsWriter w;
  const uint16_t half[] = {0x3c00, 0xc000, 0x3555, 0x0001, 0x7c00};  // 1, -2, ~0.333, subnormal, inf
  const uint16_t bf[] = {0x3f80, 0xc040};                            // 1, -3
  ASSERT_TRUE(w.Add("h", DType::kF16, {5}, std::as_bytes(std::span<const uint16_t>(half))).ok());
  ASSERT_TRUE(w.Add("bf", DType::kBF16, {2}, std::as_bytes(std::span<const uint16_t>(bf))).ok());
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(w.Serialize());
  ASSERT_TRUE(f.ok());
  std::vector<float> h = *f->ReadAsFloat("h");
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_NEAR(h[2], 0.333251953125f, 0);
  EXPECT_EQ(h[3], 5.9604644775390625e-08f);
  EXPECT_TRUE(std::isinf(h[4]));
  EXPECT_EQ(*f->ReadAsFloat("bf"), (std::vector<float>{1.0f, -3.0f}));
}

TEST(SafetensorsTest, TruncatedFilesAreDataLoss) {
  std::string bytes = Build();
  for (size_t len : {size_t{0}, size_t{5}, size_t{12}, bytes.size() - 1}) {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(bytes.substr(0, len));
    ASSERT_FALSE(f.ok()) << "length " << len;
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(f.status().message().find("truncated"), absl::string_view::npos) << f.status();
  }
}

TEST(SafetensorsTest, RejectsMalformedHeaders) {
  auto with_header = [](const std::string& json, size_t data_bytes) {
    std::string out(8, '\0');
    uint64_t n = json.size();
    std::memcpy(out.data(), &n, 8);
    return out + json + std::string(data_bytes, '\0');
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "JSON"},
      {"[1,2]", "JSON object"},
      {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "does not match shape"},
      {R"({"t":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", "unsupported"},
      {R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "negative"},
      {R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "end before"},
      {R"({"t":{"dtype":"F32","shape":[1]}})", "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       "overlap"},
  };
  for (const auto& [json, expected] : cases) {
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(with_header(json, 8));
    ASSERT_FALSE(f.ok()) << json;
    EXPECT_NE(f.status().message().find(expected), absl::string_view::npos) << f.status() << " for " << json;
  }
  std::string huge(8, '\0');
  uint64_t n = uint64_t{1} << 40;
  std::memcpy(huge.data(), &n, 8);
  EXPECT_FALSE(SafetensorsFile::Parse(huge).ok());
}

TEST(SafetensorsTest, ShapeAndNameErrorsAreClear) {
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::Parse(Build());
  ASSERT_TRUE(f.ok());
  absl::StatusOr<std::vector<float>> wrong = f->ReadAsFloat("layer.a", {3, 2});
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.status().message().find("has shape [2, 3], expected [3, 2]"), absl::string_view::npos);
  EXPECT_EQ(f->ReadAsFloat("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsFile::ReadFile("/nonexistent/x.safetensors").status().code(), absl::StatusCode::kNotFound);
  SafetensorsWriter w;
  std::vector<float> v(3);
  EXPECT_FALSE(w.AddFloat("x", {2, 2}, v).ok());
  EXPECT_TRUE(w.AddFloat("x", {3}, v).ok());
  EXPECT_EQ(w.AddFloat("x", {3}, v).code(), absl::StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace fedpers
