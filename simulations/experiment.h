// A simulated federated-personalization experiment: N virtual users of one
// corpus, the methods compared on the same users, data and local compute,
// and the measurements behind the performance-privacy-efficiency tradeoff.
// Federated methods run the deployment's round logic (CoordinatorRuntime,
// ClientSession, SecAgg+, DP) over an in-memory transport. Torch-free
// header: the command line and the sweep include it without libtorch.
#ifndef FEDPERS_SIMULATIONS_EXPERIMENT_H_
#define FEDPERS_SIMULATIONS_EXPERIMENT_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/local_training.h"
#include "common/model_config.h"
#include "coordinator/round_machine.h"
#include "coordinator/strategy.h"

namespace fedpers {

enum class Method {
  kBase,            // the base model, no adaptation
  kLocal,           // each user's residual, trained only on its own data
  kGlobal,          // the federated global adapter (frozen A_g), no residual
  kGlobalResidual,  // fedpers: federated global adapter + per-user residual
  kFedAvgLora,      // both global factors trained and averaged (inexact), no residual
  kCentralized,     // the global adapter trained on the pooled data, no privacy: the upper bound
};
// "base", "local", "global", "global+residual", "fedavg-lora", "centralized".
const char* MethodName(Method method);
// "auto" for ring_bits 0 (sized per round), else the number of bits.
std::string RingBitsName(uint32_t ring_bits);
absl::StatusOr<Method> ParseMethod(absl::string_view name);
std::vector<Method> AllMethods();

struct PretrainSettings {
  // Corpus spec to pretrain on; empty: the experiment's corpus without the
  // federated users.
  std::string corpus;
  std::string config = "tiny";  // named config or config.json path
  int64_t steps = 600;
  int64_t batch_size = 16;
  double learning_rate = 3e-3;
};

// A published figure to show beside the results (e.g. LEAF's), with what
// differs (model, split) in `note`.
struct ReferenceResult {
  std::string name;
  double accuracy = 0;
  std::string note;
};

// Each worker holds a model and trains one client at a time; far more than
// the cores only multiplies memory.
inline constexpr int kMaxWorkers = 256;
inline constexpr int64_t kMaxRounds = 1000000;

struct ExperimentConfig {
  // Users.
  std::string data = "debian-changelogs";  // corpus spec (common/corpus.h)
  bool skip_bad_records = false;           // skip malformed records (listed) instead of failing
  int64_t users = 20;                      // federated users; 0: every user with enough text
  int64_t min_user_bytes = 8000;           // users with less text are not selected
  std::string select = "random";           // random | largest
  double train_fraction = 0.8;             // each user's earliest text trains, the rest tests
  // Base model: `base` when it holds one; otherwise pretrained there (default
  // <out>/base) on the corpus's other users, which never join the federation.
  std::string base;
  PretrainSettings pretrain;
  LoraConfig lora;  // ranks, alphas, targets; the methods switch branches
  std::vector<Method> methods = AllMethods();
  // Rounds.
  int64_t rounds = 10;
  int64_t clients_per_round = 10;
  int64_t min_clients = 0;  // survivors needed to commit; 0: max(2, ceil(clients_per_round / 2))
  LocalTrainingOptions local;
  // Privacy and communication.
  bool secure_agg = true;  // false: plain aggregation (the coordinator sees each encoded update)
  uint32_t ring_bits = 0;  // 0: sized per round (the coordinator's ChooseRing); 8 to 32: fixed
  double clip_norm = 2.0;
  double noise_multiplier = 0.1;  // z; 0 turns DP noise off
  // > 0: each federated method's noise multiplier is instead the smallest
  // that keeps the ledger's epsilon after `rounds` full rounds within it
  // (NoiseMultiplierForEpsilon), so the methods compare at one epsilon.
  double target_epsilon = 0;
  double delta = 1e-5;
  // The coordinator's budgets (RoundSettings): a method's rounds stop at the
  // first round that would exceed one. Infinity ("inf" in JSON): none.
  double epsilon_budget = std::numeric_limits<double>::infinity();
  double epsilon_budget_against_coordinator = std::numeric_limits<double>::infinity();
  StrategyConfig strategy;
  double dropout = 0;  // probability that a sampled client drops out at each SecAgg+ stage
  // Evaluation and execution.
  int64_t eval_every = 0;     // rounds between evaluations; 0: about 5 over the run
  int64_t eval_tokens = 4096; // per user, from the start of its test split; 0: all
  int workers = 0;            // parallel clients, at most kMaxWorkers; 0: one per core
  uint64_t seed = 1;          // everything random in the experiment derives from it
  std::string out = "runs/simulate";
  std::vector<ReferenceResult> references;  // shown in report.md and the accuracy plot

  // InvalidArgument naming the first bad field.
  absl::Status Validate() const;
  // Checks what only the model can tell (LoRA ranks against the projections,
  // seq_len against n_positions, a local training step against the memory
  // available, rounds that SecAgg+ and the ring can carry: CheckRoundsCanOpen
  // for each federated method's adapter) before anything long runs: the
  // model is the base's config.json when EffectiveBase() holds a model, else
  // the one pretraining would build. Reads that file, nothing else.
  // `eligible`: the federated users once selected (0: "users"). With
  // neither known, a target epsilon's noise is unknown, and every check of
  // the rounds (ring, threshold, budgets) waits for the run, which calls
  // again with the count before pretraining; without a target only the
  // check of a ledger budget against one round waits.
  absl::Status ValidateForModel(int64_t eligible = 0) const;
  // The coordinator's round settings of a federated method whose global
  // adapter has `layout_size` values, over `eligible` users, but for the
  // seed and the initial adapter, which depend on the run. The noise
  // multiplier is noise_multiplier, or the one target_epsilon calls for
  // (InvalidArgument when none reaches it).
  absl::StatusOr<RoundSettings> FederatedRoundSettings(size_t layout_size, int64_t eligible) const;
  bool Noised() const { return noise_multiplier > 0 || target_epsilon > 0; }
  int64_t EffectiveMinClients() const;
  int64_t EffectiveEvalEvery() const;
  std::string EffectiveBase() const;  // `base`, or <out>/base
};

// Parses a JSON experiment config over the defaults; unknown keys and wrong
// types are errors that name the key. Nested objects: "pretrain", "lora"
// (LoraConfig keys), "local" (global_steps, residual_steps, schedule,
// batch_size, seq_len, global_learning_rate, residual_learning_rate),
// "strategy" (name, server_learning_rate, beta1, beta2, tau).
absl::StatusOr<ExperimentConfig> ParseExperimentConfig(const std::string& json_text);
// The fully resolved config, as JSON (what the run directory records).
std::string ExperimentConfigToJson(const ExperimentConfig& config);

struct EvalSummary {
  double loss = 0, perplexity = 0, accuracy = 0;  // means over users
};

struct UserResult {
  std::string user_id;
  int64_t train_bytes = 0, test_bytes = 0;
  int64_t participations = 0;  // rounds the user trained in
  double loss = 0, perplexity = 0, accuracy = 0;
  int64_t eval_tokens = 0;
};

// One round of one method (an evaluation point for `base`, which trains
// nothing, and for `centralized`, whose "rounds" are equal slices of its
// pooled training).
struct RoundRecord {
  Method method = Method::kBase;
  int64_t round = 0;
  bool committed = true;
  std::string abort_reason;
  int64_t sampled = 0, contributors = 0;
  int64_t ring_bits = 0;  // the round's SecAgg ring, as the coordinator chose it (0: no round opened)
  double bytes_up_per_client = 0, bytes_down_per_client = 0;  // protobuf payloads
  double client_seconds = 0;       // mean per sampled client: training + update pipeline + SecAgg+
  double training_seconds = 0;     // the round's local training alone (critical path over workers)
  double coordinator_seconds = 0;  // the coordinator's own work in the round
  double wall_seconds = 0;         // the round from opening to commit or abort
  double epsilon = 0;              // after the round (infinite once a round had no noise)
  // Against the coordinator, which knows the sample (no amplification);
  // nullopt when unknown.
  std::optional<double> epsilon_against_coordinator = 0.0;
  std::optional<EvalSummary> eval;  // when evaluated after this round
};

// A method against a reference method, user by user: the same users and
// held-out text, so the per-user differences carry the comparison (their
// spread is far smaller than the spread of accuracies across users).
struct PairedComparison {
  double share_better = 0;    // users whose accuracy is strictly higher
  double mean_gain = 0;       // mean over users of accuracy - reference accuracy
  double standard_error = 0;  // of mean_gain: the gains' sample sd / sqrt(users); 0 for one user
};

// `method` against `reference`; InvalidArgument unless both hold the same
// users in the same order (at least one).
absl::StatusOr<PairedComparison> CompareUsers(const std::vector<UserResult>& method,
                                              const std::vector<UserResult>& reference);

struct MethodResult {
  Method method = Method::kBase;
  std::vector<UserResult> users;  // final, in user order
  EvalSummary final_eval;
  // Against the `global` / `base` method (present only when that method
  // ran); recomputed from the users, not stored in method records.
  std::optional<PairedComparison> over_global, over_base;
  double bytes_up_per_client_round = 0, bytes_down_per_client_round = 0;
  double client_seconds_per_round = 0, coordinator_seconds_per_round = 0;
  double noise_multiplier = 0;  // what its rounds used (federated methods)
  double epsilon = 0;
  std::optional<double> epsilon_against_coordinator = 0.0;  // as in RoundRecord
  int64_t rounds_committed = 0, rounds_aborted = 0;
  // Why the method ran fewer rounds than configured (a round could not
  // open: a privacy budget spent, too few users); empty when it ran them all.
  std::string stopped;
  double wall_seconds = 0;  // the method's whole run, evaluations included
};

struct ExperimentResult {
  ExperimentConfig config;  // resolved (base directory, min_clients, eval_every)
  std::vector<std::string> users;  // the federated users
  int64_t corpus_users = 0;         // users in the corpus
  std::vector<std::string> corpus_problems;  // skipped records, dropped users
  // Settings whose cost a reader should know (DiscreteNoiseWarning: a
  // narrow fixed ring that multiplies epsilon).
  std::vector<std::string> warnings;
  std::string base_model;           // directory
  bool pretrained_here = false;
  int64_t residual_values = 0, global_values = 0;  // adapter sizes (floats)
  std::vector<RoundRecord> rounds;
  std::vector<MethodResult> methods;
  double wall_seconds = 0;
};

struct ExperimentHooks {
  bool progress = true;  // progress bars on stderr
  // Called after every round record (and its evaluation); the runner writes
  // metrics.jsonl from it as the run goes.
  std::function<void(const RoundRecord&)> on_round;
  // Reuse each method that an earlier run of this build finished with the
  // same resolved config (the methods list aside) and users: its record,
  // <out>/methods/<method>.json, written when a method finishes, stands in
  // for running it (its round records still reach on_round). An interrupted
  // run resumes at the method it was in. A record that does not match or
  // cannot be read is ignored (with a note on stderr under `progress`).
  bool reuse_finished = false;
};

// How many users a run of `config` federates: its corpus loaded and its
// users chosen as RunExperiment does. Errors as RunExperiment's for them.
absl::StatusOr<int64_t> CountFederatedUsers(const ExperimentConfig& config);

// Runs the experiment. The run directory (config.out) receives the base
// model when pretrained there, and the coordinator state of each federated
// method under state/<method>. Errors name what was wrong (config, corpus,
// base model); a method whose rounds all abort still reports its rounds.
absl::StatusOr<ExperimentResult> RunExperiment(const ExperimentConfig& config, const ExperimentHooks& hooks = {});

}  // namespace fedpers

#endif  // FEDPERS_SIMULATIONS_EXPERIMENT_H_
