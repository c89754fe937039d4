#include "common/model_config.h"

#include <gtest/gtest.h>

namespace fedpers {
namespace {

// config.json of Hugging Face's gpt2 (124M).
constexpr const char* kHfGpt2 = R"({
  "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
  "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
  "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
  "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
  "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
  "vocab_size": 50257})";

TEST(ModelConfigTest, ParsesHuggingFaceGpt2Config) {
  absl::StatusOr<ModelConfig> c = ParseModelConfigJson(kHfGpt2);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->n_embd, 768);
  EXPECT_EQ(c->n_layer, 12);
  EXPECT_EQ(c->vocab_size, 50257);
  EXPECT_EQ(c->inner_dim(), 3072);
  EXPECT_EQ(c->tokenizer, "");
  EXPECT_EQ(c->NumParameters(), 124439808);  // HF's gpt2 parameter count
}

TEST(ModelConfigTest, RoundTripsThroughJson) {
  ModelConfig tiny = *NamedModelConfig("tiny");
  absl::StatusOr<ModelConfig> back = ParseModelConfigJson(ModelConfigToJson(tiny));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->n_embd, 256);
  EXPECT_EQ(back->n_layer, 4);
  EXPECT_EQ(back->n_head, 4);
  EXPECT_EQ(back->n_positions, 128);
  EXPECT_EQ(back->vocab_size, 259);
  EXPECT_EQ(back->tokenizer, "byte");
}

TEST(ModelConfigTest, BadConfigsNameTheProblem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"n_embd": 64, "n_head": 4, "n_layer": 1, "n_positions": 8, "vocab_size": 10, "frobnicate": 1})",
       "unknown model config key 'frobnicate'"},
      {R"({"n_embd": 64, "n_head": 5, "n_layer": 1, "n_positions": 8, "vocab_size": 10})", "divisible"},
      {R"({"n_embd": -3})", "'n_embd' must be a positive integer"},
      {R"({"n_embd": "big"})", "'n_embd' must be a positive integer"},
      {R"({"activation_function": "relu"})", "not supported"},
      {R"({"model_type": "llama"})", "not gpt2"},
      {R"({"scale_attn_by_inverse_layer_idx": true})", "not supported"},
      {"{", "not valid JSON"},
      {"[]", "not a JSON object"},
  };
  for (const auto& [json, expected] : cases) {
    absl::StatusOr<ModelConfig> c = ParseModelConfigJson(json);
    ASSERT_FALSE(c.ok()) << json;
    EXPECT_NE(c.status().message().find(expected), absl::string_view::npos) << c.status();
  }
  EXPECT_FALSE(NamedModelConfig("huge").ok());
}

TEST(LoraConfigTest, ValidatesAndRoundTrips) {
  LoraConfig c;
  c.targets = {"mlp.c_fc", "attn.c_attn"};
  absl::StatusOr<LoraConfig> back = ParseLoraConfigJson(LoraConfigToJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->targets, (std::vector<std::string>{"attn.c_attn", "mlp.c_fc"}));
  EXPECT_EQ(back->global_seed, c.global_seed);
  c.targets = {"attn.q_proj"};
  EXPECT_NE(c.Validate().message().find("unknown target"), absl::string_view::npos);
  c.targets = {"attn.c_attn", "attn.c_attn"};
  EXPECT_FALSE(c.Validate().ok());
  c = LoraConfig();
  c.global_rank = 0;
  EXPECT_FALSE(c.Validate().ok());
  c = LoraConfig();
  c.global_enabled = c.residual_enabled = false;
  EXPECT_FALSE(c.Validate().ok());
  EXPECT_NE(ParseLoraConfigJson(R"({"rank": 4})").status().message().find("unknown LoRA config key 'rank'"),
            absl::string_view::npos);
  EXPECT_FALSE(ParseLoraConfigJson(R"({"global_rank": "four"})").ok());
}

}  // namespace
}  // namespace fedpers
