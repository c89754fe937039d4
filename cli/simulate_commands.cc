// `fedpers simulate` and `fedpers sweep`.
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "common/atomic_file.h"
#include "common/corpus.h"
#include "common/utf8.h"
#include "simulations/report.h"
#include "simulations/sweep.h"

namespace fedpers::cli {
namespace {

absl::StatusOr<ExperimentConfig> LoadExperimentConfig(const std::string& path) {
  if (path.empty()) return ExperimentConfig();
  absl::StatusOr<std::string> text = ReadFileToString(path, size_t{1} << 24);
  if (!text.ok()) return text.status();
  absl::StatusOr<ExperimentConfig> c = ParseExperimentConfig(*text);
  if (!c.ok()) return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

// Command-line overrides of an experiment config.
struct Overrides {
  std::string config, out, data, methods, schedule;
  int64_t users = 0, rounds = 0, clients_per_round = 0;
  double noise_multiplier = 0, target_epsilon = 0, epsilon_budget = 0;
  // Whether each numeric override was given (any value, so a bad one
  // reaches the config's validation instead of being taken for "unset").
  // clients_given and noise_given stay null for `sweep` (grid axes there).
  CLI::Option *users_given = nullptr, *rounds_given = nullptr, *clients_given = nullptr,
              *noise_given = nullptr, *target_given = nullptr, *budget_given = nullptr;
  bool plain_aggregation = false;
  bool json = false;
  bool fresh = false;
};

// `sweep` takes lists for clients per round and the noise multiplier (grid
// axes under the same names), so it passes sweep_axes and these stay out.
void AddOverrides(CLI::App* cmd, Overrides& o, bool sweep_axes = false) {
  cmd->add_option("--config", o.config,
                  "Experiment config (JSON; docs/simulation.md). Without it: the defaults");
  cmd->add_option("--out", o.out, "Run directory (overrides the config's \"out\")");
  cmd->add_option("--data", o.data, absl::StrCat("Corpus spec (overrides \"data\"): ", kCorpusSpecForms));
  o.users_given =
      cmd->add_option("--users", o.users, "Federated users (overrides \"users\"; 0: all with enough text)");
  o.rounds_given = cmd->add_option("--rounds", o.rounds, "Rounds (overrides \"rounds\")");
  if (!sweep_axes) {
    o.clients_given = cmd->add_option("--clients-per-round", o.clients_per_round,
                                      "Clients per round (overrides \"clients_per_round\")");
    o.noise_given = cmd->add_option("--noise-multiplier", o.noise_multiplier,
                                    "DP noise multiplier z (overrides; 0: no noise)");
    o.target_given =
        cmd->add_option("--target-epsilon", o.target_epsilon,
                        "Set each federated method's noise multiplier so that epsilon ends at most "
                        "this after the rounds (overrides \"target_epsilon\")")
            ->excludes(o.noise_given);
  }
  o.budget_given = cmd->add_option(
      "--epsilon-budget", o.epsilon_budget,
      "Privacy budget (overrides \"epsilon_budget\"): a method's rounds stop before epsilon would exceed it");
  cmd->add_flag(
      "--no-secure-agg", o.plain_aggregation,
      "Plain aggregation instead of SecAgg+ (sets \"secure_agg\": false; the coordinator sees each update)");
  cmd->add_option("--schedule", o.schedule, "joint | alternating | residual-after-global (overrides)");
  cmd->add_flag("--json", o.json, "Print the summary as JSON");
  cmd->add_flag(
      "--fresh", o.fresh,
      "Run everything again instead of reusing what an earlier run of this build finished with the same "
      "config (records in <out>/methods/, <out>/points/<#>/)");
}

// `sweep` validates each point instead (its axes may change what the base
// config's check would refuse, such as a budget beside noise 0).
ExperimentConfig Resolve(const Overrides& o, bool validate = true) {
  absl::StatusOr<ExperimentConfig> c = LoadExperimentConfig(o.config);
  if (!c.ok()) Fail(std::string(c.status().message()));
  if (!o.out.empty()) c->out = o.out;
  if (!o.data.empty()) c->data = o.data;
  if (*o.users_given) c->users = o.users;
  if (*o.rounds_given) c->rounds = o.rounds;
  if (o.clients_given != nullptr && *o.clients_given) c->clients_per_round = o.clients_per_round;
  if (o.noise_given != nullptr && *o.noise_given) {
    c->noise_multiplier = o.noise_multiplier;
    c->target_epsilon = 0;  // a multiplier given here replaces the config's target
  }
  if (o.target_given != nullptr && *o.target_given) {
    if (!(o.target_epsilon > 0)) Fail("--target-epsilon must be positive");
    c->target_epsilon = o.target_epsilon;
  }
  if (*o.budget_given) c->epsilon_budget = o.epsilon_budget;
  if (o.plain_aggregation) c->secure_agg = false;
  if (!o.methods.empty()) {
    c->methods.clear();
    for (absl::string_view name : absl::StrSplit(o.methods, ',')) {
      absl::StatusOr<Method> m = ParseMethod(name);
      if (!m.ok()) Fail(std::string(m.status().message()));
      c->methods.push_back(*m);
    }
  }
  if (!o.schedule.empty()) {
    absl::StatusOr<TrainingSchedule> s = ParseTrainingSchedule(o.schedule);
    if (!s.ok()) Fail(std::string(s.status().message()));
    c->local.schedule = *s;
  }
  if (absl::Status s = validate ? c->Validate() : absl::OkStatus(); !s.ok()) Fail(std::string(s.message()));
  return *c;
}

}  // namespace

void RegisterSimulate(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand(
      "simulate", "Simulate federated personalization with virtual clients and compare the methods");
  auto o = std::make_shared<Overrides>();
  AddOverrides(cmd, *o);
  cmd->add_option("--methods", o->methods,
                  "Comma-separated: base,local,global,global+residual,fedavg-lora,centralized (overrides)");
  cmd->callback([o, &global] {
    const ExperimentConfig config = Resolve(*o);
    absl::StatusOr<std::unique_ptr<MetricsLog>> log =
        MetricsLog::Create((std::filesystem::path(config.out) / "metrics.jsonl").string());
    if (!log.ok()) Fail(std::string(log.status().message()));
    ExperimentHooks hooks;
    hooks.progress = !global.quiet;
    hooks.on_round = [&log](const RoundRecord& r) { (*log)->Append(r); };
    hooks.reuse_finished = !o->fresh;
    absl::StatusOr<ExperimentResult> result = RunExperiment(config, hooks);
    if (!result.ok()) Fail(std::string(result.status().message()));
    absl::StatusOr<ReportFiles> files = WriteReport(*result, config.out);
    if (!files.ok()) Fail(std::string(files.status().message()));
    for (const std::string& w : files->warnings)
      std::fprintf(stderr, "warning: %s\n", EscapeForTerminal(w).c_str());
    if (o->json) {
      nlohmann::ordered_json j = ExperimentSummaryJson(*result);
      j["run_dir"] = config.out;
      j["plots"] = files->plots;
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::cout << absl::StrFormat("%d users of %s, %d rounds, %d clients per round (%.0f s)\n\n",
                                 result->users.size(), config.data, config.rounds, config.clients_per_round,
                                 result->wall_seconds)
              << ResultsTable(*result) << "\n";
    std::cout << "report: " << (std::filesystem::path(config.out) / "report.md").string() << "\n";
    for (const std::string& p : files->plots) std::cout << "plot:   " << p << "\n";
  });

  auto* sweep = app.add_subcommand("sweep",
                                   "Run global+residual over a grid of ranks, ring bits, noise and clients "
                                   "per round; table and Pareto front");
  auto so = std::make_shared<Overrides>();
  auto grid = std::make_shared<SweepGrid>();
  AddOverrides(sweep, *so, /*sweep_axes=*/true);
  // Each axis not given keeps the config's value.
  sweep->add_option("--global-rank", grid->global_rank, "Global LoRA ranks to try (comma-separated)")
      ->delimiter(',');
  sweep->add_option("--residual-rank", grid->residual_rank, "Residual LoRA ranks to try")->delimiter(',');
  sweep->add_option("--ring-bits", grid->ring_bits, "SecAgg ring bits to try (0: sized per round)")
      ->delimiter(',');
  sweep->add_option("--noise-multiplier", grid->noise_multiplier, "DP noise multipliers z to try")
      ->delimiter(',');
  sweep
      ->add_option(
          "--target-epsilon", grid->target_epsilon,
          "Target epsilons to try, each point's noise multiplier set for it (instead of --noise-multiplier)")
      ->delimiter(',');
  sweep->add_option("--clients-per-round", grid->clients_per_round, "Clients per round to try")
      ->delimiter(',');
  sweep->footer(
      "Without --out, the sweep writes to the config's \"out\" with \"-sweep\" appended (runs/demo-sweep for "
      "configs/demo.json, runs/simulate-sweep without a config). Every point uses the experiment's base "
      "model: its \"base\", or <its out>/base, pretrained there if missing.");
  sweep->callback([so, grid, &global] {
    // The experiment as configured, with its own run directory: the points
    // share its base model (pretrained there when missing), wherever the
    // sweep writes.
    Overrides experiment = *so;
    experiment.out.clear();
    ExperimentConfig config = Resolve(experiment, /*validate=*/false);
    config.base = config.EffectiveBase();
    config.out = so->out.empty() ? SweepRunDirectory(config.out) : so->out;
    absl::StatusOr<SweepResult> result =
        RunSweep(config, *grid, !global.quiet, /*reuse_finished=*/!so->fresh);
    if (!result.ok()) Fail(std::string(result.status().message()));
    absl::StatusOr<ReportFiles> files = WriteSweepReport(*result, config.out);
    if (!files.ok()) Fail(std::string(files.status().message()));
    for (const std::string& w : files->warnings)
      std::fprintf(stderr, "warning: %s\n", EscapeForTerminal(w).c_str());
    if (so->json) {
      std::cout << SweepJson(*result).dump(2) << "\n";
      return;
    }
    std::cout << SweepTable(*result) << "\n"
              << "report: " << (std::filesystem::path(config.out) / "sweep.md").string() << "\n";
    for (const std::string& p : files->plots) std::cout << "plot:   " << p << "\n";
  });
}

}  // namespace fedpers::cli
