#include <gtest/gtest.h>

#include <limits>

#include "common/corpus.h"
#include "common/model/trainer.h"
#include "common/tokenizer.h"
#include "tests/model/test_util.h"

namespace fedpers {
namespace {

using testing::RandomModel;
using testing::TempPath;

struct UserTokens {
  std::vector<int32_t> train, test;
};

UserTokens Tokens(const UserText& u) {
  TextSplit s = SplitTrainTest(u.text, 0.8);
  return {ByteTokenizer::Encode(s.train), ByteTokenizer::Encode(s.test)};
}

TrainOptions Fast(int64_t steps) {
  TrainOptions o;
  o.steps = steps;
  o.batch_size = 8;
  o.learning_rate = 1e-2;
  o.seed = 4;
  return o;
}

std::vector<torch::Tensor> Residual(Gpt2LmHead& m) { return m->BranchParameters(LoraBranch::kResidual); }

// A base model that has seen other users: it knows the shape of the text
// (words, spaces, sentences) but not Alice's or Bob's vocabulary.
Gpt2LmHead PretrainedBase() {
  Gpt2LmHead m = RandomModel();
  std::vector<int32_t> stream;
  for (const UserText& u : SyntheticUsers(6, 4000, 77)) {
    std::vector<int32_t> t = ByteTokenizer::Encode(u.text);
    stream.insert(stream.end(), t.begin(), t.end());
  }
  m->SetBranchEnabled(LoraBranch::kGlobal, false);
  m->SetBranchEnabled(LoraBranch::kResidual, false);
  m->SetBaseTrainable(true);
  std::vector<torch::Tensor> params;
  for (auto& [name, p] : m->BaseParameters()) params.push_back(p);
  TrainOptions o = Fast(300);
  o.learning_rate = 3e-3;
  auto t = Trainer::Create(m, params, stream, o);
  EXPECT_TRUE(t.ok() && (*t)->Run(300).ok());
  m->SetBaseTrainable(false);
  m->SetBranchEnabled(LoraBranch::kGlobal, true);
  m->SetBranchEnabled(LoraBranch::kResidual, true);
  return m;
}

TEST(TrainingTest, ResidualLowersItsUsersLossAndLeavesOthersAlone) {
  std::vector<UserText> users = SyntheticUsers(2, 6000, 11);
  UserTokens alice = Tokens(users[0]), bob = Tokens(users[1]);
  Gpt2LmHead m = PretrainedBase();
  m->ResetResidual(1001);
  const double alice_before = Evaluate(m, alice.test)->loss;
  const double bob_base = Evaluate(m, bob.test)->loss;

  absl::StatusOr<std::unique_ptr<Trainer>> t = Trainer::Create(m, Residual(m), alice.train, Fast(200));
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->Run(200).ok());
  const double alice_after = Evaluate(m, alice.test)->loss;
  EXPECT_LT(alice_after, 0.7 * alice_before) << "before " << alice_before << " after " << alice_after;

  // Bob's own residual (fresh, B_u = 0): his loss is exactly the base loss.
  std::vector<float> alice_residual = m->FlattenBranch(LoraBranch::kResidual);
  m->ResetResidual(2002);
  EXPECT_EQ(Evaluate(m, bob.test)->loss, bob_base);
  // And Alice's adapter helps Alice far more than it helps Bob.
  ASSERT_TRUE(m->LoadBranch(LoraBranch::kResidual, alice_residual).ok());
  const double bob_with_alice = Evaluate(m, bob.test)->loss;
  EXPECT_GT(bob_with_alice - alice_after, 0.5) << "bob " << bob_with_alice << " alice " << alice_after;
}

TEST(TrainingTest, DeterministicUnderASeed) {
  UserTokens u = Tokens(SyntheticUsers(1, 3000, 3)[0]);
  std::vector<std::vector<float>> results;
  for (int run = 0; run < 2; ++run) {
    Gpt2LmHead m = RandomModel();
    std::vector<torch::Tensor> params = m->BranchParameters(LoraBranch::kGlobal);
    for (auto& p : Residual(m)) params.push_back(p);
    auto t = Trainer::Create(m, params, u.train, Fast(6));
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE((*t)->Run(6).ok());
    std::vector<float> flat = m->FlattenBranch(LoraBranch::kGlobal);
    std::vector<float> r = m->FlattenBranch(LoraBranch::kResidual);
    flat.insert(flat.end(), r.begin(), r.end());
    results.push_back(flat);
  }
  EXPECT_EQ(results[0], results[1]);
}

TEST(TrainingTest, ResumeContinuesExactly) {
  UserTokens u = Tokens(SyntheticUsers(1, 3000, 5)[0]);
  Gpt2LmHead straight = RandomModel();
  auto t = Trainer::Create(straight, Residual(straight), u.train, Fast(8));
  ASSERT_TRUE((*t)->Run(8).ok());

  Gpt2LmHead first = RandomModel();
  auto t1 = Trainer::Create(first, Residual(first), u.train, Fast(8));
  ASSERT_TRUE((*t1)->Run(4).ok());
  const std::string state = TempPath("optimizer.pt");
  ASSERT_TRUE((*t1)->SaveState(state).ok());
  Gpt2LmHead second = RandomModel();
  ASSERT_TRUE(second->LoadBranch(LoraBranch::kResidual, first->FlattenBranch(LoraBranch::kResidual)).ok());
  auto t2 = Trainer::Create(second, Residual(second), u.train, Fast(8));
  ASSERT_TRUE((*t2)->LoadState(state, 4).ok());
  ASSERT_TRUE((*t2)->Run(8).ok());
  std::vector<float> a = straight->FlattenBranch(LoraBranch::kResidual);
  std::vector<float> b = second->FlattenBranch(LoraBranch::kResidual);
  ASSERT_EQ(a.size(), b.size());
  double max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, double(std::abs(a[i] - b[i])));
  EXPECT_LT(max_diff, 1e-6);
  EXPECT_EQ((*t2)->LoadState("/nonexistent/state.pt", 0).code(), absl::StatusCode::kNotFound);
}

// Adam's first step moves every parameter with a gradient by about the
// learning rate, so each group's largest move is its own scaled rate.
TEST(TrainingTest, ParamGroupsTrainAtTheirOwnLearningRates) {
  Gpt2LmHead m = RandomModel();
  m->ResetResidual(7);
  std::vector<ParamGroup> groups(2);
  groups[0].params = m->BranchParameters(LoraBranch::kGlobal);
  groups[1].params = Residual(m);
  groups[1].lr_scale = 0.25;
  auto flat = [](const std::vector<torch::Tensor>& ps) {
    std::vector<torch::Tensor> v;
    for (const auto& p : ps) v.push_back(p.detach().flatten().clone());
    return torch::cat(v);
  };
  const torch::Tensor global_before = flat(groups[0].params), residual_before = flat(groups[1].params);
  TrainOptions o = Fast(1);
  o.warmup_steps = 0;
  std::vector<int32_t> tokens = ByteTokenizer::Encode(SyntheticUsers(1, 3000, 5)[0].text);
  auto t = Trainer::Create(m, groups, tokens, o);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->Run(1).ok());
  const double global_move = (flat(groups[0].params) - global_before).abs().max().item<double>();
  const double residual_move = (flat(groups[1].params) - residual_before).abs().max().item<double>();
  EXPECT_NEAR(global_move, o.learning_rate, 1e-3 * o.learning_rate);
  EXPECT_NEAR(residual_move, 0.25 * o.learning_rate, 1e-3 * o.learning_rate);
  groups[1].lr_scale = 0;
  EXPECT_NE(Trainer::Create(m, groups, tokens, o).status().message().find("lr_scale"), absl::string_view::npos);
}

// Micro-batches (here 4 + 2 windows of a batch of 6) accumulate the gradient
// of the same batch mean: per step the loss and gradient norm agree with the
// whole-batch pass up to float summation order, and so do the parameters
// after a few Adam steps.
TEST(TrainingTest, MicroBatchesTrainLikeTheWholeBatch) {
  UserTokens u = Tokens(SyntheticUsers(1, 3000, 9)[0]);
  std::vector<std::vector<StepStats>> stats(2);
  std::vector<std::vector<float>> params(2);
  for (int run = 0; run < 2; ++run) {
    Gpt2LmHead m = RandomModel();
    m->ResetResidual(3);
    std::vector<ParamGroup> groups(2);
    groups[0].params = m->BranchParameters(LoraBranch::kGlobal);
    groups[1].params = Residual(m);
    TrainOptions o = Fast(4);
    o.batch_size = 6;
    o.micro_batch_size = run == 0 ? 0 : 4;
    auto t = Trainer::Create(m, groups, u.train, o);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->Run(4, [&](const StepStats& s) {
                   stats[run].push_back(s);
                   return true;
                 }).ok());
    params[run] = m->FlattenBranch(LoraBranch::kGlobal);
    std::vector<float> r = m->FlattenBranch(LoraBranch::kResidual);
    params[run].insert(params[run].end(), r.begin(), r.end());
  }
  ASSERT_EQ(stats[0].size(), 4u);
  ASSERT_EQ(stats[1].size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(stats[1][i].loss, stats[0][i].loss, 1e-5 * stats[0][i].loss) << "step " << i + 1;
    EXPECT_NEAR(stats[1][i].grad_norm, stats[0][i].grad_norm, 1e-4 * stats[0][i].grad_norm) << "step " << i + 1;
    EXPECT_EQ(stats[1][i].tokens, stats[0][i].tokens);
  }
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < params[0].size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(params[0][i] - params[1][i])));
    max_abs = std::max(max_abs, double(std::abs(params[0][i])));
  }
  EXPECT_GT(max_abs, 1e-2);  // the steps moved the adapters
  EXPECT_LT(max_diff, 1e-5);
}

// Recomputing each block in backward differentiates the same ops again:
// every LoRA gradient agrees with the stored-activation pass, including the
// first block's (whose input, from the frozen embeddings, needs none). The
// switch is the trainer's for one Run only.
TEST(TrainingTest, RecomputedActivationsGiveTheSameGradients) {
  std::vector<int32_t> tokens = ByteTokenizer::Encode(SyntheticUsers(1, 3000, 13)[0].text);
  WindowSampler sampler(tokens, RandomModel()->config().n_positions, 2);
  auto [inputs, targets] = sampler.Batch(0, 3);
  std::vector<std::vector<torch::Tensor>> grads(2);
  for (int run = 0; run < 2; ++run) {
    Gpt2LmHead m = RandomModel();
    m->ResetResidual(5);
    std::vector<torch::Tensor> params = m->BranchParameters(LoraBranch::kGlobal);
    for (auto& p : Residual(m)) params.push_back(p);
    {
      torch::NoGradGuard no_grad;  // non-zero B so every factor gets a gradient
      for (auto& p : params) p.normal_(0.0, 0.05);
    }
    for (auto& p : params) p.set_requires_grad(true);
    m->transformer->set_recompute_activations(run == 1);
    m->Loss(inputs, targets).backward();
    for (auto& p : params) {
      ASSERT_TRUE(p.grad().defined());
      grads[run].push_back(p.grad().clone());
    }
  }
  ASSERT_EQ(grads[0].size(), grads[1].size());
  for (size_t i = 0; i < grads[0].size(); ++i) {
    const double scale = grads[0][i].abs().max().item<double>();
    EXPECT_GT(scale, 0) << "tensor " << i;
    EXPECT_LE((grads[0][i] - grads[1][i]).abs().max().item<double>(), 1e-5 * scale) << "tensor " << i;
  }

  // Through the trainer, with micro-batches too; the model's switch is back
  // off afterwards.
  std::vector<std::vector<float>> after(2);
  for (int run = 0; run < 2; ++run) {
    Gpt2LmHead m = RandomModel();
    TrainOptions o = Fast(3);
    o.batch_size = 4;
    o.micro_batch_size = run == 0 ? 0 : 2;
    o.recompute_activations = run == 1;
    auto t = Trainer::Create(m, m->BranchParameters(LoraBranch::kGlobal), tokens, o);
    ASSERT_TRUE(t.ok()) << t.status();
    ASSERT_TRUE((*t)->Run(3).ok());
    EXPECT_FALSE(m->transformer->recompute_activations());
    after[run] = m->FlattenBranch(LoraBranch::kGlobal);
  }
  double max_diff = 0;
  for (size_t i = 0; i < after[0].size(); ++i) {
    max_diff = std::max(max_diff, double(std::abs(after[0][i] - after[1][i])));
  }
  EXPECT_LT(max_diff, 1e-5);
}

TEST(TrainingTest, BadInputsAreErrors) {
  Gpt2LmHead m = RandomModel();
  EXPECT_NE(Trainer::Create(m, Residual(m), {}, Fast(1)).status().message().find("empty"), absl::string_view::npos);
  EXPECT_FALSE(Trainer::Create(m, std::vector<torch::Tensor>{}, {1, 2, 3}, Fast(1)).ok());
  TrainOptions bad = Fast(1);
  bad.learning_rate = -1;
  EXPECT_FALSE(Trainer::Create(m, Residual(m), {1, 2, 3}, bad).ok());
  bad = Fast(1);
  bad.learning_rate = std::numeric_limits<double>::infinity();
  EXPECT_NE(Trainer::Create(m, Residual(m), {1, 2, 3}, bad).status().message().find("positive and finite, got inf"),
            absl::string_view::npos);
  bad = Fast(1);
  bad.micro_batch_size = -1;
  EXPECT_NE(Trainer::Create(m, Residual(m), {1, 2, 3}, bad).status().message().find("micro_batch_size"),
            absl::string_view::npos);
  bad = Fast(1);
  bad.seq_len = 1000;
  EXPECT_NE(Trainer::Create(m, Residual(m), {1, 2, 3}, bad).status().message().find("n_positions"),
            absl::string_view::npos);
  EXPECT_FALSE(Evaluate(m, {}).ok());
}

// Sizes no machine can hold are refused before anything is allocated (the
// lower bounds of a 2^40-window batch are petabytes).
TEST(TrainingTest, PassesThatCannotFitInMemoryAreRefused) {
  Gpt2LmHead m = RandomModel();
  TrainOptions huge = Fast(1);
  huge.batch_size = int64_t{1} << 40;
  huge.micro_batch_size = 8;
  absl::Status s = Trainer::Create(m, Residual(m), {1, 2, 3}, huge).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("token ids alone"), absl::string_view::npos) << s;
  huge.batch_size = int64_t{1} << 30;
  huge.micro_batch_size = 0;
  s = Trainer::Create(m, Residual(m), {1, 2, 3}, huge).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("set micro_batch_size"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("or recompute activations"), absl::string_view::npos) << s;
  huge.recompute_activations = true;
  s = Trainer::Create(m, Residual(m), {1, 2, 3}, huge).status();
  EXPECT_EQ(s.message().find("or recompute"), absl::string_view::npos) << "recompute is already on: " << s;
}

TEST(TrainingTest, EvaluateCountsEveryTokenOnce) {
  Gpt2LmHead m = RandomModel();
  std::vector<int32_t> tokens(102);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7919) % 256);
  absl::StatusOr<EvalResult> r = Evaluate(m, tokens, 32, 2);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tokens, 101);
  EXPECT_NEAR(r->perplexity, std::exp(r->loss), 1e-9);
  EXPECT_GE(r->accuracy, 0.0);
  EXPECT_LE(r->accuracy, 1.0);
  // A random model over 259 tokens is near uniform: loss near ln(259).
  EXPECT_NEAR(r->loss, std::log(259.0), 0.5);
}

TEST(TrainingTest, ScheduleWarmsUpThenDecays) {
  TrainOptions o;
  o.steps = 100;
  o.warmup_steps = 10;
  o.learning_rate = 1.0;
  o.min_lr_ratio = 0.1;
  EXPECT_NEAR(ScheduledLearningRate(o, 0), 1.0 / 11, 1e-12);
  EXPECT_NEAR(ScheduledLearningRate(o, 10), 1.0, 1e-12);
  EXPECT_NEAR(ScheduledLearningRate(o, 55), 0.55, 1e-12);
  EXPECT_NEAR(ScheduledLearningRate(o, 100), 0.1, 1e-12);
  for (int s = 11; s < 100; ++s) EXPECT_LE(ScheduledLearningRate(o, s), ScheduledLearningRate(o, s - 1));
}

}  // namespace
}  // namespace fedpers
