#include "common/model/checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sys/wait.h>

#include "common/atomic_file.h"
#include "common/model/peft_export.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/model/test_util.h"

namespace fedpers {
namespace {

using testing::RandomIds;
using testing::RandomizeAdapters;
using testing::RandomModel;
using testing::TempPath;

TEST(CheckpointTest, SavedModelLoadsWithIdenticalLogits) {
  Gpt2LmHead m = RandomModel();
  const std::string dir = TempPath("ckpt");
  ASSERT_TRUE(SaveBaseModel(m, dir).ok());
  absl::StatusOr<Gpt2LmHead> back = LoadBaseModel(dir, LoraConfig());
  ASSERT_TRUE(back.ok()) << back.status();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = RandomIds(2, 32);
  EXPECT_TRUE(torch::equal(m->forward(ids), (*back)->forward(ids)));
  // HF names: the file holds exactly the GPT2LMHeadModel base tensors.
  SafetensorsFile file = *SafetensorsFile::ReadFile(dir + "/model.safetensors");
  EXPECT_TRUE(file.contains("transformer.h.1.attn.c_attn.weight"));
  EXPECT_EQ(file.info("transformer.h.1.attn.c_attn.weight")->shape, (std::vector<int64_t>{64, 192}));
  EXPECT_EQ(file.info("transformer.h.0.mlp.c_proj.weight")->shape, (std::vector<int64_t>{256, 64}));
  EXPECT_FALSE(file.contains("lm_head.weight"));
  for (const std::string& n : file.names()) EXPECT_EQ(n.find("lora"), std::string::npos) << n;
}

// Writes the model the way an HF GPT2Model checkpoint is laid out: no
// "transformer." prefix, attention-mask buffers present, lm_head stored.
TEST(CheckpointTest, LoadsHuggingFaceLayout) {
  Gpt2LmHead m = RandomModel();
  const std::string dir = TempPath("hf");
  std::filesystem::create_directories(dir);
  SafetensorsWriter w;
  std::vector<std::vector<float>> keep;
  for (auto& [name, t] : m->BaseParameters()) {
    torch::Tensor c = t.detach().contiguous();
    keep.emplace_back(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
    ASSERT_TRUE(w.AddFloat(name.substr(12), c.sizes().vec(), keep.back()).ok());
  }
  std::vector<float> mask(32 * 32, 1.0f);
  ASSERT_TRUE(w.AddFloat("h.0.attn.bias", {1, 1, 32, 32}, mask).ok());
  torch::Tensor wte = m->transformer->wte->weight.detach().contiguous();
  keep.emplace_back(wte.data_ptr<float>(), wte.data_ptr<float>() + wte.numel());
  ASSERT_TRUE(w.AddFloat("lm_head.weight", wte.sizes().vec(), keep.back()).ok());
  ASSERT_TRUE(w.WriteFile(dir + "/model.safetensors").ok());
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", ModelConfigToJson(m->config())).ok());
  absl::StatusOr<Gpt2LmHead> back = LoadBaseModel(dir, LoraConfig());
  ASSERT_TRUE(back.ok()) << back.status();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = RandomIds(1, 8);
  EXPECT_TRUE(torch::equal(m->forward(ids), (*back)->forward(ids)));
}

TEST(CheckpointTest, BadFilesGiveClearErrors) {
  Gpt2LmHead m = RandomModel();
  const std::string dir = TempPath("bad");
  ASSERT_TRUE(SaveBaseModel(m, dir).ok());
  const std::string st = dir + "/model.safetensors";
  std::string bytes = *ReadFileToString(st);

  ASSERT_TRUE(WriteFileAtomically(st, bytes.substr(0, bytes.size() / 2)).ok());
  absl::StatusOr<Gpt2LmHead> r = LoadBaseModel(dir, LoraConfig());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("truncated"), absl::string_view::npos) << r.status();

  std::filesystem::remove(st);
  r = LoadBaseModel(dir, LoraConfig());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();

  // Wrong shapes: a config that disagrees with the weights.
  ASSERT_TRUE(WriteFileAtomically(st, bytes).ok());
  ModelConfig wider = m->config();
  wider.n_embd = 128;
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", ModelConfigToJson(wider)).ok());
  r = LoadBaseModel(dir, LoraConfig());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("expected [259, 128]"), absl::string_view::npos) << r.status();

  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", R"({"n_embd": 64, "colour": "red"})").ok());
  r = LoadBaseModel(dir, LoraConfig());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unknown model config key 'colour'"), absl::string_view::npos);

  EXPECT_EQ(LoadBaseModel("/nonexistent/model", LoraConfig()).status().code(), absl::StatusCode::kNotFound);

  // Non-finite weights are named at load, not found later as divergence.
  {
    torch::NoGradGuard no_grad;
    Gpt2LmHead poisoned = RandomModel();
    for (auto& [name, t] : poisoned->BaseParameters()) {
      if (name == "transformer.h.1.mlp.c_fc.weight") {
        t[0][3] = std::numeric_limits<float>::quiet_NaN();
        t[2][1] = std::numeric_limits<float>::infinity();
      }
    }
    const std::string nan_dir = TempPath("nan");
    ASSERT_TRUE(SaveBaseModel(poisoned, nan_dir).ok());
    r = LoadBaseModel(nan_dir, LoraConfig());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
    EXPECT_NE(r.status().message().find(
                  "tensor 'transformer.h.1.mlp.c_fc.weight' holds 2 NaN or infinite value(s)"),
              absl::string_view::npos)
        << r.status();
  }
}

TEST(CheckpointTest, AdaptersRoundTripAndRefuseOtherConfigs) {
  Gpt2LmHead m = RandomModel();
  RandomizeAdapters(m);
  const std::string dir = TempPath("adapters");
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(SaveAdapter(m, LoraBranch::kGlobal, dir + "/g.safetensors").ok());
  ASSERT_TRUE(SaveAdapter(m, LoraBranch::kResidual, dir + "/r.safetensors").ok());
  Gpt2LmHead fresh = RandomModel();
  ASSERT_TRUE(LoadAdapter(fresh, LoraBranch::kGlobal, dir + "/g.safetensors").ok());
  ASSERT_TRUE(LoadAdapter(fresh, LoraBranch::kResidual, dir + "/r.safetensors").ok());
  EXPECT_EQ(fresh->FlattenBranch(LoraBranch::kGlobal), m->FlattenBranch(LoraBranch::kGlobal));
  EXPECT_EQ(fresh->FlattenBranch(LoraBranch::kResidual), m->FlattenBranch(LoraBranch::kResidual));
  LoraConfig other;
  other.global_rank = 4;
  Gpt2LmHead mismatch = RandomModel(other);
  absl::Status s = LoadAdapter(mismatch, LoraBranch::kGlobal, dir + "/g.safetensors");
  EXPECT_NE(s.message().find("different global LoRA config"), absl::string_view::npos) << s;
}

// PEFT's merge: W += (alpha / r) (B A)^T for fan_in_fan_out modules. The
// exported adapter merged into a fresh copy of the base equals fedpers' own
// merged model.
TEST(PeftExportTest, ExportedAdapterMergedThePeftWayEqualsMergedModel) {
  for (PeftExportKind kind : {PeftExportKind::kGlobal, PeftExportKind::kGlobalPlusResidual}) {
    Gpt2LmHead m = RandomModel();
    RandomizeAdapters(m);
    const std::string dir = TempPath(kind == PeftExportKind::kGlobal ? "peft_g" : "peft_gr");
    ASSERT_TRUE(ExportPeftAdapter(m, kind, dir, "base").ok());
    if (kind == PeftExportKind::kGlobal) m->SetBranchEnabled(LoraBranch::kResidual, false);
    m->Merge();
    Gpt2LmHead plain = RandomModel();  // same base weights (same seed)
    ASSERT_TRUE(MergePeftAdapter(plain, dir).ok());
    plain->SetBranchEnabled(LoraBranch::kGlobal, false);
    plain->SetBranchEnabled(LoraBranch::kResidual, false);
    torch::NoGradGuard no_grad;
    torch::Tensor ids = RandomIds(2, 32);
    EXPECT_LT((m->forward(ids) - plain->forward(ids)).abs().max().item<double>(), 1e-5);

    nlohmann::json config = nlohmann::json::parse(*ReadFileToString(dir + "/adapter_config.json"));
    EXPECT_EQ(config["peft_type"], "LORA");
    EXPECT_EQ(config["fan_in_fan_out"], true);
    EXPECT_EQ(config["r"], kind == PeftExportKind::kGlobal ? 8 : 12);
    SafetensorsFile st = *SafetensorsFile::ReadFile(dir + "/adapter_model.safetensors");
    EXPECT_EQ(st.info("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight")->shape,
              (std::vector<int64_t>{config["r"].get<int64_t>(), 64}));
    EXPECT_EQ(st.info("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight")->shape,
              (std::vector<int64_t>{192, config["r"].get<int64_t>()}));
  }
}

TEST(PeftExportTest, MalformedAdapterChangesNothing) {
  Gpt2LmHead m = RandomModel();
  RandomizeAdapters(m);
  const std::string dir = TempPath("peft_bad");
  ASSERT_TRUE(ExportPeftAdapter(m, PeftExportKind::kGlobal, dir, "base").ok());
  ASSERT_TRUE(WriteFileAtomically(dir + "/adapter_config.json",
                                  R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "fan_in_fan_out": true})")
                  .ok());
  Gpt2LmHead plain = RandomModel();
  auto before = plain->BaseParameters()[5].second.clone();
  absl::Status s = MergePeftAdapter(plain, dir);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("expected [4, 64]"), absl::string_view::npos) << s;
  EXPECT_TRUE(torch::equal(before, plain->BaseParameters()[5].second));
}

}  // namespace
}  // namespace fedpers

namespace fedpers {
namespace {

// Cross-implementation check: tests/model/hf_reference.py recomputes the
// logits with HF GPT-2's and PEFT's forward written in Python PyTorch.
TEST(HfReferenceTest, PythonReimplementationOfHfAndPeftAgrees) {
  Gpt2LmHead m = testing::RandomModel();
  RandomizeAdapters(m);
  const std::string dir = TempPath("hf_reference");
  ASSERT_TRUE(SaveBaseModel(m, dir + "/base").ok());
  ASSERT_TRUE(ExportPeftAdapter(m, PeftExportKind::kGlobalPlusResidual, dir + "/peft", "base").ok());
  torch::NoGradGuard no_grad;
  torch::Tensor ids = RandomIds(2, 32);
  torch::Tensor adapted = m->forward(ids).contiguous();
  m->SetBranchEnabled(LoraBranch::kGlobal, false);
  m->SetBranchEnabled(LoraBranch::kResidual, false);
  torch::Tensor base = m->forward(ids).contiguous();
  SafetensorsWriter w;
  ASSERT_TRUE(w.Add("ids", DType::kI64, ids.sizes().vec(),
                    std::as_bytes(std::span<const int64_t>(ids.data_ptr<int64_t>(), ids.numel())))
                  .ok());
  ASSERT_TRUE(w.AddFloat("base_logits", base.sizes().vec(),
                         std::span<const float>(base.data_ptr<float>(), base.numel()))
                  .ok());
  ASSERT_TRUE(w.AddFloat("adapted_logits", adapted.sizes().vec(),
                         std::span<const float>(adapted.data_ptr<float>(), adapted.numel()))
                  .ok());
  ASSERT_TRUE(w.WriteFile(dir + "/case.safetensors").ok());
  const std::string cmd = std::string("/usr/bin/python3 ") + FEDPERS_SOURCE_DIR +
                          "/tests/model/hf_reference.py " + dir;
  const int rc = std::system(cmd.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) GTEST_SKIP() << "python3 with torch is not installed";
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd;
}

}  // namespace
}  // namespace fedpers
