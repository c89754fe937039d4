#include "common/flat_layout.h"

#include <gtest/gtest.h>

namespace fedpers {
namespace {

TEST(FlatLayoutTest, FlattenUnflattenRoundTrips) {
  absl::StatusOr<FlatLayout> layout = FlatLayout::Create({{"a", {2, 3}}, {"b", {4}}});
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->total_size(), 10);
  EXPECT_EQ(layout->offset(1), 6);
  std::vector<float> a = {1, 2, 3, 4, 5, 6}, b = {7, 8, 9, 10};
  absl::StatusOr<std::vector<float>> flat = layout->Flatten({{"b", b}, {"a", a}});
  ASSERT_TRUE(flat.ok());
  EXPECT_EQ(*flat, (std::vector<float>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  auto parts = layout->Unflatten(*flat);
  ASSERT_TRUE(parts.ok());
  EXPECT_EQ(std::vector<float>((*parts)[0].begin(), (*parts)[0].end()), a);
  EXPECT_EQ(std::vector<float>((*parts)[1].begin(), (*parts)[1].end()), b);

  absl::StatusOr<std::string> st = layout->ToSafetensors(*flat);
  ASSERT_TRUE(st.ok());
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(*st);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(*layout->FromSafetensors(*file), *flat);
}

TEST(FlatLayoutTest, RejectsMismatches) {
  FlatLayout layout = *FlatLayout::Create({{"a", {2}}, {"b", {1}}});
  std::vector<float> two = {1, 2}, one = {1}, three = {1, 2, 3};
  EXPECT_FALSE(layout.Flatten({{"a", two}}).ok());                             // missing b
  EXPECT_FALSE(layout.Flatten({{"a", three}, {"b", one}}).ok());               // wrong size
  EXPECT_FALSE(layout.Flatten({{"a", two}, {"b", one}, {"c", one}}).ok());     // extra
  EXPECT_FALSE(layout.Unflatten(two).ok());
  EXPECT_FALSE(FlatLayout::Create({{"a", {2}}, {"a", {3}}}).ok());
  EXPECT_FALSE(FlatLayout::Create({{"a", {0}}}).ok());
  EXPECT_FALSE(FlatLayout::Create({{"", {1}}}).ok());
}

TEST(FlatLayoutTest, GlobalLayoutIsCanonicalAndFingerprinted) {
  ModelConfig model;  // tiny
  LoraConfig lora;
  lora.targets = {"mlp.c_proj", "attn.c_attn"};  // order given does not matter
  absl::StatusOr<FlatLayout> layout = GlobalAdapterLayout(model, lora);
  ASSERT_TRUE(layout.ok()) << layout.status();
  ASSERT_EQ(layout->num_tensors(), 8u);
  EXPECT_EQ(layout->tensors()[0].name, "transformer.h.0.attn.c_attn.lora_B_global");
  EXPECT_EQ(layout->tensors()[0].shape, (std::vector<int64_t>{768, 8}));
  EXPECT_EQ(layout->tensors()[1].name, "transformer.h.0.mlp.c_proj.lora_B_global");
  EXPECT_EQ(layout->tensors()[1].shape, (std::vector<int64_t>{256, 8}));
  EXPECT_EQ(layout->total_size(), 4 * (768 + 256) * 8);
  lora.targets = {"attn.c_attn", "mlp.c_proj"};
  EXPECT_EQ(GlobalAdapterLayout(model, lora)->Fingerprint(), layout->Fingerprint());
  lora.global_rank = 4;
  EXPECT_NE(GlobalAdapterLayout(model, lora)->Fingerprint(), layout->Fingerprint());

  absl::StatusOr<FlatLayout> residual = ResidualAdapterLayout(model, lora);
  ASSERT_TRUE(residual.ok());
  EXPECT_EQ(residual->tensors()[0].name, "transformer.h.0.attn.c_attn.lora_A_residual");
  EXPECT_EQ(residual->tensors()[0].shape, (std::vector<int64_t>{4, 256}));
  lora.global_enabled = false;
  EXPECT_EQ(GlobalAdapterLayout(model, lora).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fedpers
