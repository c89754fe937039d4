#include <gtest/gtest.h>

#include "common/model/cpu_kernels.h"
#include "common/model/runtime.h"
#include "common/model/gpt2.h"
#include "tests/model/test_util.h"

namespace fedpers {
namespace {

using testing::RandomIds;
using testing::RandomizeAdapters;
using testing::RandomModel;

TEST(LoraTest, ZeroBLeavesTheBaseModelExactly) {
  Gpt2LmHead m = RandomModel();
  torch::Tensor ids = RandomIds(3, 20);
  torch::NoGradGuard no_grad;
  m->SetBranchEnabled(LoraBranch::kGlobal, false);
  m->SetBranchEnabled(LoraBranch::kResidual, false);
  torch::Tensor base = m->forward(ids);
  m->SetBranchEnabled(LoraBranch::kGlobal, true);
  m->SetBranchEnabled(LoraBranch::kResidual, true);
  torch::Tensor adapted = m->forward(ids);
  EXPECT_TRUE(torch::equal(base, adapted)) << "B_g = B_u = 0 must not change a single bit";
}

TEST(LoraTest, MergedAndUnmergedAgreeAndUnmergeRestores) {
  Gpt2LmHead m = RandomModel();
  RandomizeAdapters(m);
  torch::Tensor ids = RandomIds(2, 32);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> before;
  for (auto& [n, p] : m->BaseParameters()) before.push_back(p.clone());
  torch::Tensor unmerged = m->forward(ids);
  m->Merge();
  torch::Tensor merged = m->forward(ids);
  EXPECT_LT((merged - unmerged).abs().max().item<double>(), 1e-5);
  m->Merge();  // idempotent
  EXPECT_LT((m->forward(ids) - unmerged).abs().max().item<double>(), 1e-5);
  m->Unmerge();
  auto after = m->BaseParameters();
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(torch::equal(before[i], after[i].second)) << after[i].first;
  }
  EXPECT_TRUE(torch::equal(m->forward(ids), unmerged));
}

TEST(LoraTest, BranchesAreSwitchable) {
  Gpt2LmHead m = RandomModel();
  RandomizeAdapters(m);
  torch::Tensor ids = RandomIds(1, 16);
  torch::NoGradGuard no_grad;
  torch::Tensor both = m->forward(ids);
  m->SetBranchEnabled(LoraBranch::kResidual, false);
  torch::Tensor global_only = m->forward(ids);
  m->SetBranchEnabled(LoraBranch::kGlobal, false);
  torch::Tensor none = m->forward(ids);
  EXPECT_FALSE(torch::allclose(both, global_only));
  EXPECT_FALSE(torch::allclose(global_only, none));
  // Zeroing the residual B equals switching the residual off.
  m->SetBranchEnabled(LoraBranch::kGlobal, true);
  m->SetBranchEnabled(LoraBranch::kResidual, true);
  for (LoraConv1D& mod : m->lora_modules()) mod->lora_B_residual.zero_();
  EXPECT_TRUE(torch::equal(m->forward(ids), global_only));
}

TEST(LoraTest, GlobalAIsDerivedNotRandom) {
  Gpt2LmHead a = RandomModel(LoraConfig(), 1);
  Gpt2LmHead b = RandomModel(LoraConfig(), 99);  // other torch seed
  for (size_t i = 0; i < a->lora_modules().size(); ++i) {
    EXPECT_TRUE(torch::equal(a->lora_modules()[i]->lora_A_global, b->lora_modules()[i]->lora_A_global));
  }
  LoraConfig other;
  other.global_seed = 12345;
  Gpt2LmHead c = RandomModel(other, 1);
  EXPECT_FALSE(torch::equal(a->lora_modules()[0]->lora_A_global, c->lora_modules()[0]->lora_A_global));
}

TEST(LoraTest, FlattenAndLoadRoundTrip) {
  Gpt2LmHead m = RandomModel();
  RandomizeAdapters(m);
  for (LoraBranch b : {LoraBranch::kGlobal, LoraBranch::kResidual}) {
    std::vector<float> flat = m->FlattenBranch(b);
    EXPECT_EQ(static_cast<int64_t>(flat.size()), m->BranchLayout(b).total_size());
    Gpt2LmHead other = RandomModel();
    ASSERT_TRUE(other->LoadBranch(b, flat).ok());
    EXPECT_EQ(other->FlattenBranch(b), flat);
  }
  // The flat layout equals the torch-free GlobalAdapterLayout.
  EXPECT_EQ(m->BranchLayout(LoraBranch::kGlobal), *GlobalAdapterLayout(m->config(), m->lora_config()));
  std::vector<float> flat = m->FlattenBranch(LoraBranch::kGlobal);
  flat.pop_back();
  EXPECT_EQ(m->LoadBranch(LoraBranch::kGlobal, flat).code(), absl::StatusCode::kInvalidArgument);
  flat.push_back(std::nanf(""));
  EXPECT_NE(m->LoadBranch(LoraBranch::kGlobal, flat).message().find("NaN"), absl::string_view::npos);
}

// The fused LoRA forward/backward must match plain autograd through the
// separate branch products, with A_g frozen and trained (fedavg-lora).
void CheckFusedGradients(bool train_global_a) {
  LoraConfig lora;
  lora.train_global_a = train_global_a;
  Gpt2LmHead m = RandomModel(lora);
  RandomizeAdapters(m);
  std::vector<torch::Tensor> params = m->BranchParameters(LoraBranch::kGlobal);
  for (auto& t : m->BranchParameters(LoraBranch::kResidual)) params.push_back(t);
  for (auto& p : params) p.set_requires_grad(true);
  torch::Tensor ids = RandomIds(2, 16);
  torch::Tensor targets = RandomIds(2, 16, 9);
  m->Loss(ids, targets).backward();
  std::vector<torch::Tensor> fused;
  for (auto& p : params) fused.push_back(p.grad().clone());

  // Reference: base weights trainable forces the unfused path.
  for (auto& p : params) p.mutable_grad() = torch::Tensor();
  m->SetBaseTrainable(true);
  m->Loss(ids, targets).backward();
  for (size_t i = 0; i < params.size(); ++i) {
    const double scale = params[i].grad().abs().max().item<double>();
    EXPECT_LT((fused[i] - params[i].grad()).abs().max().item<double>(), 1e-4 * scale + 1e-7) << i;
  }
}

TEST(LoraTest, FusedGradientsMatchReferenceAutograd) { CheckFusedGradients(false); }
TEST(LoraTest, FusedGradientsMatchReferenceAutogradWithTrainedGlobalA) { CheckFusedGradients(true); }

// fedavg-lora: A_g is part of the global adapter, starts from the seeded
// values the coordinator derives without libtorch, and a reset restores them.
TEST(LoraTest, TrainedGlobalAIsInTheLayoutAndStartsSeeded) {
  LoraConfig lora;
  lora.train_global_a = true;
  Gpt2LmHead m = RandomModel(lora);
  const FlatLayout& layout = m->BranchLayout(LoraBranch::kGlobal);
  EXPECT_EQ(layout.tensors()[0].name, "transformer.h.0.attn.c_attn.lora_A_global");
  EXPECT_EQ(layout.tensors()[1].name, "transformer.h.0.attn.c_attn.lora_B_global");
  absl::StatusOr<std::vector<float>> initial = InitialGlobalAdapter(testing::SmallConfig(), lora);
  ASSERT_TRUE(initial.ok()) << initial.status();
  EXPECT_EQ(m->FlattenBranch(LoraBranch::kGlobal), *initial);
  RandomizeAdapters(m);
  EXPECT_NE(m->FlattenBranch(LoraBranch::kGlobal), *initial);
  m->ResetGlobal();
  EXPECT_EQ(m->FlattenBranch(LoraBranch::kGlobal), *initial);
  // The frozen default keeps A_g out of the layout: B_g only, initially 0.
  LoraConfig frozen;
  EXPECT_EQ(GlobalAdapterLayout(testing::SmallConfig(), frozen)->num_tensors(), 4u * 2);
  EXPECT_EQ(*InitialGlobalAdapter(testing::SmallConfig(), frozen),
            std::vector<float>(GlobalAdapterLayout(testing::SmallConfig(), frozen)->total_size(), 0.0f));
}

TEST(LoraTest, GeluKernelMatchesTorch) {
  torch::Tensor x = torch::linspace(-12, 12, 100001);
  torch::Tensor y = torch::empty_like(x), dx = torch::empty_like(x);
  torch::Tensor dy = torch::ones_like(x);
  GeluTanhForward(x.data_ptr<float>(), y.data_ptr<float>(), x.numel());
  GeluTanhBackward(x.data_ptr<float>(), dy.data_ptr<float>(), dx.data_ptr<float>(), x.numel());
  torch::Tensor xr = x.clone().set_requires_grad(true);
  torch::Tensor yr = torch::gelu(xr, "tanh");
  yr.sum().backward();
  EXPECT_LT(((y - yr.detach()).abs() / (x.abs() + 1e-3)).max().item<double>(), 1e-6);
  EXPECT_LT((dx - xr.grad()).abs().max().item<double>(), 3e-5);
  float nan = std::nanf(""), out;
  GeluTanhForward(&nan, &out, 1);
  EXPECT_TRUE(std::isnan(out));
}

}  // namespace
}  // namespace fedpers

namespace fedpers {
namespace {

TEST(RuntimeTest, DetectsTheReferenceBlas) {
  EXPECT_TRUE(IsReferenceBlas("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0"));
  EXPECT_FALSE(IsReferenceBlas("/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblasp-r0.3.21.so"));
  EXPECT_FALSE(IsReferenceBlas("/usr/lib/x86_64-linux-gnu/blis-openmp/libblas.so.3"));
  EXPECT_FALSE(IsReferenceBlas(""));
  TorchRuntimeInfo info = InitTorchRuntime(0, /*warn=*/false);
  EXPECT_EQ(info.threads, AvailableCores());
  EXPECT_EQ(torch::get_num_threads(), AvailableCores());
  EXPECT_FALSE(info.blas_library.empty()) << "some library serves sgemm_";
}

}  // namespace
}  // namespace fedpers

namespace fedpers {
namespace {

// The float32 BLAS attention against the generic libtorch path (taken for
// float64), forward and gradient, at even and odd lengths.
TEST(AttentionTest, BlasPathMatchesGenericPath) {
  for (int64_t t : {1, 7, 32, 33}) {
    torch::manual_seed(t);
    torch::Tensor qkv = torch::randn({2, t, 3 * 64});
    torch::Tensor gy = torch::randn({2, t, 64});
    torch::Tensor a = qkv.clone().set_requires_grad(true);
    torch::Tensor b = qkv.to(torch::kFloat64).set_requires_grad(true);
    torch::Tensor ya = CausalSelfAttention(a, 4), yb = CausalSelfAttention(b, 4);
    ya.backward(gy);
    yb.backward(gy.to(torch::kFloat64));
    EXPECT_LT((ya.to(torch::kFloat64) - yb).abs().max().item<double>(), 1e-5) << t;
    EXPECT_LT((a.grad().to(torch::kFloat64) - b.grad()).abs().max().item<double>(), 1e-5) << t;
  }
}

}  // namespace
}  // namespace fedpers
