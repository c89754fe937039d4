#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/json_fields.h"
#include "simulations/experiment.h"
#include "simulations/sweep.h"

namespace fedpers {
namespace {

TEST(ExperimentConfigTest, DefaultsAreValidAndRoundTripThroughJson) {
  ExperimentConfig defaults;
  ASSERT_TRUE(defaults.Validate().ok()) << defaults.Validate();
  EXPECT_EQ(defaults.methods.size(), 6u);
  EXPECT_TRUE(defaults.secure_agg);
  EXPECT_GT(defaults.noise_multiplier, 0) << "DP is on by default";
  absl::StatusOr<ExperimentConfig> back = ParseExperimentConfig(ExperimentConfigToJson(defaults));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ExperimentConfigToJson(*back), ExperimentConfigToJson(defaults));
}

TEST(ExperimentConfigTest, ParsesNestedSectionsAndMethods) {
  absl::StatusOr<ExperimentConfig> c = ParseExperimentConfig(R"({
    "data": "synthetic:users=8", "users": 8, "rounds": 3, "clients_per_round": 4,
    "methods": ["global+residual", "local"], "lora": {"global_rank": 4, "residual_rank": 2},
    "local": {"global_steps": 5, "residual_steps": 7, "schedule": "alternating", "micro_batch_size": 2,
              "recompute_activations": true},
    "strategy": {"name": "fedyogi", "server_learning_rate": 0.01}, "noise_multiplier": 0})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->methods, (std::vector<Method>{Method::kGlobalResidual, Method::kLocal}));
  EXPECT_EQ(c->lora.global_rank, 4);
  EXPECT_EQ(c->local.schedule, TrainingSchedule::kAlternating);
  EXPECT_EQ(c->local.residual_steps, 7);
  EXPECT_EQ(c->local.micro_batch_size, 2);
  EXPECT_TRUE(c->local.recompute_activations);
  EXPECT_EQ(c->strategy.name, "fedyogi");
  EXPECT_EQ(c->EffectiveMinClients(), 2);
  EXPECT_EQ(c->EffectiveEvalEvery(), 1);
}

// The budgets: a number, or "inf" (no budget, the default), as the resolved
// config writes them; they reach the coordinator's round settings.
TEST(ExperimentConfigTest, BudgetsAreNumbersOrInfAndReachTheRoundSettings) {
  ExperimentConfig defaults;
  EXPECT_TRUE(std::isinf(defaults.epsilon_budget));
  const std::string resolved = ExperimentConfigToJson(defaults);
  EXPECT_NE(resolved.find(R"("epsilon_budget": "inf")"), std::string::npos) << resolved;
  absl::StatusOr<ExperimentConfig> c =
      ParseExperimentConfig(R"({"epsilon_budget": 8, "epsilon_budget_against_coordinator": "inf"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->FederatedRoundSettings(1000, 100)->epsilon_budget, 8);
  EXPECT_TRUE(std::isinf(c->FederatedRoundSettings(1000, 100)->epsilon_budget_against_coordinator));
  c = ParseExperimentConfig(R"({"epsilon_budget_against_coordinator": 30})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->FederatedRoundSettings(1000, 100)->epsilon_budget_against_coordinator, 30);
  absl::StatusOr<ExperimentConfig> back = ParseExperimentConfig(ExperimentConfigToJson(*c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->epsilon_budget_against_coordinator, 30);
  EXPECT_TRUE(std::isinf(back->epsilon_budget));
  for (const char* bad : {R"({"epsilon_budget": 0})", R"({"epsilon_budget": -3})",
                          R"({"epsilon_budget_against_coordinator": 0})"}) {
    c = ParseExperimentConfig(bad);
    EXPECT_NE(c.status().message().find("must be positive"), absl::string_view::npos) << bad << c.status();
  }
  for (const char* bad : {R"({"epsilon_budget": "lots"})", R"({"epsilon_budget": null})",
                          R"({"epsilon_budget_against_coordinator": [1]})"}) {
    c = ParseExperimentConfig(bad);
    EXPECT_NE(c.status().message().find("must be a number or \"inf\""), absl::string_view::npos)
        << bad << c.status();
  }
  c = ParseExperimentConfig(R"({"epsilon_budget": 8, "noise_multiplier": 0})");
  EXPECT_NE(c.status().message().find("a finite epsilon budget needs noise"), absl::string_view::npos)
      << c.status();
  EXPECT_TRUE(ParseExperimentConfig(R"({"epsilon_budget": "inf", "noise_multiplier": 0})").ok());
}

// A target epsilon sets each method's noise multiplier: the smallest whose
// projected epsilon after the rounds is within it (for the method's layout
// and users); the resolved config keeps the target, not a multiplier.
TEST(ExperimentConfigTest, TargetEpsilonSetsTheNoiseMultiplier) {
  absl::StatusOr<ExperimentConfig> c = ParseExperimentConfig(
      R"({"target_epsilon": 8, "rounds": 12, "clients_per_round": 10, "epsilon_budget": 9})");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<RoundSettings> settings = c->FederatedRoundSettings(73728, 100);
  ASSERT_TRUE(settings.ok()) << settings.status();
  EXPECT_EQ(*NoiseMultiplierForEpsilon(*settings, 73728, 100, 12, 8), settings->noise_multiplier);
  absl::StatusOr<double> projected = ProjectedEpsilon(*settings, 73728, 100, 12);
  ASSERT_TRUE(projected.ok()) << projected.status();
  EXPECT_LE(*projected, 8);
  EXPECT_GT(*projected, 7.9) << "no more noise than the target needs";
  EXPECT_GT(c->FederatedRoundSettings(73728, 20)->noise_multiplier, settings->noise_multiplier)
      << "fewer users: a larger share sampled each round";

  const std::string resolved = ExperimentConfigToJson(*c);
  EXPECT_EQ(resolved.find("\"noise_multiplier\""), std::string::npos) << resolved;
  absl::StatusOr<ExperimentConfig> back = ParseExperimentConfig(resolved);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->target_epsilon, 8);
  EXPECT_EQ(ExperimentConfigToJson(*back), resolved);

  c = ParseExperimentConfig(R"({"target_epsilon": 8, "noise_multiplier": 0.5})");
  EXPECT_NE(c.status().message().find("both \"noise_multiplier\" and \"target_epsilon\""),
            absl::string_view::npos)
      << c.status();
  c = ParseExperimentConfig(R"({"target_epsilon": -1})");
  EXPECT_NE(c.status().message().find("\"target_epsilon\" must be >= 0"), absl::string_view::npos)
      << c.status();
  c = ParseExperimentConfig(R"({"target_epsilon": 1e-12})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(c->FederatedRoundSettings(73728, 100)
                .status()
                .message()
                .find("\"target_epsilon\": no noise multiplier"),
            absl::string_view::npos)
      << c->FederatedRoundSettings(73728, 100).status();
}

TEST(ExperimentConfigTest, BadConfigsAreNamedErrors) {
  auto error = [](const std::string& json) {
    absl::StatusOr<ExperimentConfig> c = ParseExperimentConfig(json);
    EXPECT_FALSE(c.ok()) << json;
    return c.ok() ? std::string() : std::string(c.status().message());
  };
  EXPECT_NE(error(R"({"rounds": 3, "colour": 1})").find("\"colour\""), std::string::npos);
  EXPECT_NE(error(R"({"rounds": "three"})").find("\"rounds\""), std::string::npos);
  EXPECT_NE(error(R"({"methods": ["global", "magic"]})").find("magic"), std::string::npos);
  EXPECT_NE(error(R"({"methods": ["local", "local"]})").find("twice"), std::string::npos);
  EXPECT_NE(error(R"({"local": {"schedule": "sometimes"}})").find("sometimes"), std::string::npos);
  EXPECT_NE(error(R"({"local": {"speed": 1}})").find("\"speed\""), std::string::npos);
  EXPECT_NE(error(R"({"local": {"micro_batch_size": -2}})").find("micro_batch_size"), std::string::npos);
  EXPECT_NE(error(R"({"local": {"recompute_activations": "yes"}})").find("recompute_activations"), std::string::npos);
  EXPECT_NE(error(R"({"local": {"residual_learning_rate": -1}})").find("residual_learning_rate"), std::string::npos);
  EXPECT_NE(error(R"({"local": {"global_steps": 0, "residual_steps": 0}})").find("not both 0"), std::string::npos);
  EXPECT_NE(error(R"({"users": 4, "clients_per_round": 10})").find("clients_per_round"), std::string::npos);
  EXPECT_NE(error(R"({"dropout": 1.5})").find("dropout"), std::string::npos);
  EXPECT_NE(error(R"({"rounds": 1000000000})").find("\"rounds\" must be 1 to 1000000"), std::string::npos);
  EXPECT_NE(error(R"({"workers": 40000})").find("\"workers\" must be 0 to 256"), std::string::npos);
  EXPECT_NE(error(R"({"methods": ["local", "base", "local"]})").find("method 'local' is listed twice"),
            std::string::npos);
  // Nesting no config needs is refused while parsing.
  EXPECT_NE(error("{\"users\": " + std::string(100000, '[') + std::string(100000, ']') + "}")
                .find("nests deeper than 64"),
            std::string::npos);
  EXPECT_NE(error(R"({"noise_multiplier": -1})").find("noise_multiplier"), std::string::npos);
  // A key given twice: a reader takes the first, the parser would keep the last.
  EXPECT_NE(error(R"({"rounds": 2, "users": 4, "rounds": 50})").find("gives the key \"rounds\" twice"),
            std::string::npos);
  EXPECT_NE(error(R"({"local": {"batch_size": 2, "batch_size": 2}})").find("\"batch_size\" twice"),
            std::string::npos);
  nlohmann::json same_key_apart;
  EXPECT_TRUE(
      ParseJsonObject(R"({"a": {"k": 1}, "b": [{"k": 2}, {"k": 3}], "k": 4})", "t", same_key_apart).ok())
      << "the same key in different objects is not a duplicate";
  EXPECT_NE(error("[1, 2]").find("object"), std::string::npos);
  EXPECT_NE(error("{not json").find("JSON"), std::string::npos);
  // Types are checked, not converted: a fraction, a huge or negative count,
  // NaN (not JSON) and overflowing numbers are errors naming the key.
  EXPECT_NE(error(R"({"rounds": 2.5})").find("\"rounds\" must be an integer"), std::string::npos);
  EXPECT_NE(error(R"({"rounds": 1e20})").find("\"rounds\" must be an integer in"), std::string::npos);
  EXPECT_NE(error(R"({"seed": -1})").find("\"seed\""), std::string::npos);
  EXPECT_NE(error(R"({"clip_norm": 1e999})").find("number overflow"), std::string::npos);
  EXPECT_NE(error(R"({"clip_norm": 1e-308})").find("\"clip_norm\" must be in [1e-06, 1e+06]"),
            std::string::npos);
  EXPECT_NE(error(R"({"clip_norm": NaN})").find("line 1"), std::string::npos);
  EXPECT_NE(error(R"({"secure_agg": 1})").find("\"secure_agg\" must be true or false"), std::string::npos);
  EXPECT_NE(error(R"({"local": {"batch_size": "8"}})").find("local: \"batch_size\" must be an integer"),
            std::string::npos);
  absl::StatusOr<ExperimentConfig> integral = ParseExperimentConfig(R"({"rounds": 4.0})");
  ASSERT_TRUE(integral.ok()) << integral.status();
  EXPECT_EQ(integral->rounds, 4) << "a number with an integral value is that integer";
}

// Model-dependent checks run before pretraining or the corpus: against the
// pretrain config when no base exists, else against the base's config.json.
TEST(ExperimentConfigTest, ChecksRanksAndWindowAgainstTheModelBeforeRunning) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "validate_for_model";
  std::filesystem::remove_all(dir);
  ExperimentConfig c;
  c.out = (dir / "run").string();  // no base there: the "tiny" that pretraining would build
  EXPECT_EQ(c.EffectiveBase(), (dir / "run" / "base").string());
  ASSERT_TRUE(c.ValidateForModel().ok()) << c.ValidateForModel();
  c.local.seq_len = 100000;
  absl::Status s = c.ValidateForModel();
  EXPECT_NE(s.message().find("seq_len 100000 exceeds the model's n_positions (128)"), absl::string_view::npos) << s;
  c.local.seq_len = 0;
  c.lora.residual_rank = 100000;
  s = c.ValidateForModel();
  EXPECT_NE(s.message().find("residual_rank 100000 exceeds 256"), absl::string_view::npos) << s;
  c.lora.residual_rank = 4;
  // A ledger budget below one round's cost (known once "users" is): every
  // round would be refused, after the pretraining.
  c.epsilon_budget = 1e-3;
  s = c.ValidateForModel();
  EXPECT_NE(s.message().find("\"epsilon_budget\" 0.001 is below what one round costs"),
            absl::string_view::npos)
      << s;
  c.epsilon_budget = 1e6;
  EXPECT_TRUE(c.ValidateForModel().ok()) << c.ValidateForModel();
  // With "users": 0 the checks that need the count wait for it (the run
  // passes it once the users are chosen).
  c.users = 0;
  c.epsilon_budget = 1e-3;
  EXPECT_TRUE(c.ValidateForModel().ok()) << c.ValidateForModel();
  EXPECT_NE(c.ValidateForModel(20).message().find("is below what one round costs"), absl::string_view::npos);
  c.epsilon_budget = std::numeric_limits<double>::infinity();
  c.target_epsilon = 1e-12;
  EXPECT_TRUE(c.ValidateForModel().ok()) << c.ValidateForModel();
  EXPECT_NE(c.ValidateForModel(20).message().find("\"target_epsilon\": no noise multiplier"),
            absl::string_view::npos)
      << c.ValidateForModel(20);
  c.target_epsilon = 0;
  c.users = 20;
  c.pretrain.config = "enormous";
  EXPECT_NE(c.ValidateForModel().message().find("\"pretrain\" config: unknown model config 'enormous'"),
            absl::string_view::npos) << c.ValidateForModel();
  // A base directory with a model: its config.json decides (n_positions 64 here).
  c.base = (dir / "base").string();
  std::filesystem::create_directories(dir / "base");
  std::ofstream(dir / "base" / "model.safetensors") << "not read by the check";
  std::ofstream(dir / "base" / "config.json") << R"({"n_embd": 64, "n_layer": 1, "n_head": 2, "n_positions": 64})";
  ASSERT_TRUE(c.ValidateForModel().ok()) << c.ValidateForModel();
  c.local.seq_len = 65;
  EXPECT_NE(c.ValidateForModel().message().find("n_positions (64)"), absl::string_view::npos);
  c.local.seq_len = 0;
  c.lora.global_rank = 65;
  EXPECT_NE(c.ValidateForModel().message().find("global_rank 65 exceeds 64"), absl::string_view::npos);
  std::ofstream(dir / "base" / "config.json") << "{broken";
  s = c.ValidateForModel();
  EXPECT_NE(s.message().find("base model: "), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("config.json"), absl::string_view::npos) << s;
  std::filesystem::remove_all(dir);
}

TEST(SweepTest, ParetoFrontKeepsTheUndominatedPoints) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<SweepPoint> p(5);
  p[0].accuracy = 0.60; p[0].epsilon = inf; p[0].bytes_up = 100;  // best accuracy, no privacy
  p[1].accuracy = 0.55; p[1].epsilon = 2;   p[1].bytes_up = 100;  // private
  p[2].accuracy = 0.55; p[2].epsilon = 4;   p[2].bytes_up = 100;  // dominated by 1
  p[3].accuracy = 0.50; p[3].epsilon = 2;   p[3].bytes_up = 50;   // cheapest
  p[4].accuracy = 0.50; p[4].epsilon = 2;   p[4].bytes_up = 60;   // dominated by 3
  MarkParetoFront(p);
  EXPECT_TRUE(p[0].pareto);
  EXPECT_TRUE(p[1].pareto);
  EXPECT_FALSE(p[2].pareto);
  EXPECT_TRUE(p[3].pareto);
  EXPECT_FALSE(p[4].pareto);
  // From a demo sweep: rank 16 rounds its longer vector into an epsilon
  // 0.014% lower than rank 8's, at twice the bytes and 0.11 less accuracy.
  // Costs within 1% are equal, so rank 8 dominates it; a point 2% cheaper
  // in epsilon stays on the front.
  std::vector<SweepPoint> q(3);
  q[0].accuracy = 0.3089; q[0].epsilon = 101.9965; q[0].bytes_up = 177097;
  q[1].accuracy = 0.2000; q[1].epsilon = 101.9822; q[1].bytes_up = 370633;
  q[2].accuracy = 0.2000; q[2].epsilon = 99.9;     q[2].bytes_up = 370633;
  MarkParetoFront(q);
  EXPECT_TRUE(q[0].pareto);
  EXPECT_FALSE(q[1].pareto) << "0.014% less epsilon is no tradeoff";
  EXPECT_TRUE(q[2].pareto);
  // Equal points both stay.
  std::vector<SweepPoint> same(2);
  same[0].accuracy = same[1].accuracy = 0.5;
  same[0].epsilon = 10; same[1].epsilon = 10.05;
  same[0].bytes_up = same[1].bytes_up = 100;
  MarkParetoFront(same);
  EXPECT_TRUE(same[0].pareto);
  EXPECT_TRUE(same[1].pareto);
}

TEST(SweepTest, PointsCrossTheAxesAndKeepTheScaleOfEachRank) {
  ExperimentConfig base;
  base.out = (std::filesystem::path(testing::TempDir()) / "sweep_plan").string();  // "tiny", as pretrained
  base.lora.global_rank = 8;
  base.lora.global_alpha = 16;  // scale 2
  base.lora.residual_rank = 4;
  base.lora.residual_alpha = 4;  // scale 1
  base.noise_multiplier = 0.3;
  SweepGrid grid;
  grid.global_rank = {8, 32};
  grid.residual_rank = {2};
  grid.clients_per_round = {5, 10};
  absl::StatusOr<std::vector<ExperimentConfig>> points = SweepPointConfigs(base, grid);
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 4u);
  const std::vector<std::pair<int64_t, int64_t>> rank_and_clients = {{8, 5}, {8, 10}, {32, 5}, {32, 10}};
  for (size_t i = 0; i < points->size(); ++i) {
    const ExperimentConfig& c = (*points)[i];
    EXPECT_EQ(c.lora.global_rank, rank_and_clients[i].first);
    EXPECT_EQ(c.clients_per_round, rank_and_clients[i].second);
    EXPECT_EQ(c.lora.global_scale(), 2.0) << "point " << i;
    EXPECT_EQ(c.lora.residual_rank, 2);
    EXPECT_EQ(c.lora.residual_alpha, 2.0) << "scale 1 at rank 2";
    EXPECT_EQ(c.noise_multiplier, 0.3) << "an axis not given keeps the config's value";
    EXPECT_EQ(c.out, (std::filesystem::path(base.out) / "points" / std::to_string(i)).string());
  }
  EXPECT_EQ((*points)[0].lora.global_alpha, 16.0) << "the config's own rank keeps its alpha as written";
  grid.global_rank = {8, 1000};
  absl::Status s = SweepPointConfigs(base, grid).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("sweep point 2: "), absl::string_view::npos) << s;

  // The noise axis is multipliers or target epsilons; a multiplier given
  // drops the config's target.
  grid = SweepGrid();
  grid.target_epsilon = {4, 16};
  points = SweepPointConfigs(base, grid);
  ASSERT_TRUE(points.ok()) << points.status();
  ASSERT_EQ(points->size(), 2u);
  EXPECT_EQ((*points)[0].target_epsilon, 4);
  EXPECT_EQ((*points)[1].target_epsilon, 16);
  base.target_epsilon = 4;
  grid = SweepGrid();
  grid.noise_multiplier = {0.5};
  points = SweepPointConfigs(base, grid);
  ASSERT_TRUE(points.ok()) << points.status();
  EXPECT_EQ((*points)[0].target_epsilon, 0);
  EXPECT_EQ((*points)[0].noise_multiplier, 0.5);
  grid.target_epsilon = {4};
  s = SweepPointConfigs(base, grid).status();
  EXPECT_NE(s.message().find("not both"), absl::string_view::npos) << s;
  grid.noise_multiplier.clear();
  grid.target_epsilon = {4, 0};
  s = SweepPointConfigs(base, grid).status();
  EXPECT_NE(s.message().find("a target epsilon must be positive and finite, got 0"), absl::string_view::npos)
      << s;
  // A point without noise runs without the budgets (its epsilon is infinite).
  base.target_epsilon = 0;
  base.epsilon_budget = 50;
  grid = SweepGrid();
  grid.noise_multiplier = {0, 0.5};
  points = SweepPointConfigs(base, grid);
  ASSERT_TRUE(points.ok()) << points.status();
  EXPECT_TRUE(std::isinf((*points)[0].epsilon_budget));
  EXPECT_EQ((*points)[1].epsilon_budget, 50);
}

TEST(SweepTest, RunsBesideTheExperimentNotInsideIt) {
  EXPECT_EQ(SweepRunDirectory("runs/demo"), "runs/demo-sweep");
  EXPECT_EQ(SweepRunDirectory("runs/demo/"), "runs/demo-sweep");
  EXPECT_EQ(SweepRunDirectory("./runs//demo"), "runs/demo-sweep");
  EXPECT_EQ(SweepRunDirectory("/abs/x"), "/abs/x-sweep");
  EXPECT_EQ(SweepRunDirectory("demo"), "demo-sweep");
  EXPECT_EQ(SweepRunDirectory("."), "sweep");
  EXPECT_EQ(SweepRunDirectory("runs/.."), "sweep");
  EXPECT_EQ(SweepRunDirectory("../x"), "../x-sweep");
}

}  // namespace
}  // namespace fedpers
