// The experiment runner: users, base model, and one run per method on the
// same users, data and local compute.
#include "simulations/experiment.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "client/client_session.h"
#include "common/corpus.h"
#include "common/flat_layout.h"
#include "common/host_memory.h"
#include "common/model/checkpoint.h"
#include "common/model/jobs.h"
#include "common/model/runtime.h"
#include "common/portable_prg.h"
#include "common/progress.h"
#include "common/tokenizer.h"
#include "coordinator/round_machine.h"
#include "simulations/report.h"
#include "simulations/virtual_federation.h"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

// A method's name as a file or directory name ("global-residual").
std::string MethodFileName(Method m) { return absl::StrReplaceAll(MethodName(m), {{"+", "-"}}); }

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

uint64_t Derive(uint64_t seed, absl::string_view purpose) { return Fnv1a64(absl::StrCat(seed, "/", purpose)); }

struct SimUser {
  std::string id;
  absl::string_view train, test;  // views into the corpus
};

// Which branches a method evaluates with and how its models are built.
struct MethodSetup {
  LoraConfig lora;
  bool global = false, residual = false;
};

MethodSetup SetupFor(Method m, const LoraConfig& base_lora) {
  MethodSetup s;
  s.lora = base_lora;
  s.lora.train_global_a = false;
  switch (m) {
    case Method::kBase: break;
    case Method::kLocal: s.residual = true; break;
    case Method::kGlobal:
    case Method::kCentralized:
      s.lora.residual_enabled = m == Method::kCentralized;  // centralized shares the both-branch pool
      s.global = true;
      break;
    case Method::kGlobalResidual:
      s.global = true;
      s.residual = true;
      break;
    case Method::kFedAvgLora:
      s.lora.residual_enabled = false;
      s.lora.train_global_a = true;
      s.global = true;
      break;
  }
  return s;
}

// Chooses the federated users among those with at least min_user_bytes.
absl::StatusOr<std::vector<SimUser>> SelectUsers(const Corpus& corpus, const ExperimentConfig& c) {
  std::vector<const UserText*> eligible;
  for (const UserText& u : corpus.users) {
    if (static_cast<int64_t>(u.text.size()) >= c.min_user_bytes) eligible.push_back(&u);
  }
  const int64_t want = c.users > 0 ? c.users : static_cast<int64_t>(eligible.size());
  if (static_cast<int64_t>(eligible.size()) < want || want < c.clients_per_round) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus '", corpus.spec, "' has ", eligible.size(), " users with at least ", c.min_user_bytes,
        " bytes of text; the experiment needs ", std::max(want, c.clients_per_round),
        " (lower \"users\", \"clients_per_round\" or \"min_user_bytes\")"));
  }
  if (c.select == "largest") {
    std::stable_sort(eligible.begin(), eligible.end(),
                     [](const UserText* a, const UserText* b) { return a->text.size() > b->text.size(); });
  } else {
    std::mt19937_64 gen(Derive(c.seed, "select-users"));
    std::shuffle(eligible.begin(), eligible.end(), gen);
  }
  eligible.resize(static_cast<size_t>(want));
  std::sort(eligible.begin(), eligible.end(), [](const UserText* a, const UserText* b) { return a->user_id < b->user_id; });
  std::vector<SimUser> users;
  for (const UserText* u : eligible) {
    TextSplit split = SplitTrainTest(u->text, c.train_fraction);
    if (split.train.size() < 64 || split.test.size() < 16) continue;  // too little to train or test on
    users.push_back({u->user_id, split.train, split.test});
  }
  if (static_cast<int64_t>(users.size()) < c.clients_per_round) {
    return absl::InvalidArgumentError("too few selected users have both training and test text");
  }
  return users;
}

// The runner's shared state for one experiment.
class Runner {
 public:
  Runner(const ExperimentConfig& c, const ExperimentHooks& hooks, Gpt2LmHead base, std::vector<SimUser> users,
         ExperimentResult& result)
      : c_(c), hooks_(hooks), base_(base), users_(std::move(users)), result_(result) {
    cores_ = std::max(1, torch::get_num_threads());
    workers_ = c.workers > 0 ? c.workers : cores_;
    seq_len_ = c.local.seq_len > 0 ? c.local.seq_len : base->config().n_positions;
  }

  absl::StatusOr<MethodResult> Run(Method m) {
    const Clock::time_point start = Clock::now();
    MethodResult r;
    r.method = m;
    absl::Status s;
    switch (m) {
      case Method::kBase: s = RunBase(r); break;
      case Method::kLocal: s = RunLocal(r); break;
      case Method::kCentralized: s = RunCentralized(r); break;
      default: s = RunFederated(m, r); break;
    }
    if (!s.ok()) return absl::Status(s.code(), absl::StrCat(MethodName(m), ": ", s.message()));
    r.wall_seconds = Since(start);
    Summarize(r);
    return r;
  }

 private:
  bool EvaluatedAfter(int64_t round) const {
    return round == 0 || round == c_.rounds || round % c_.EffectiveEvalEvery() == 0;
  }

  // Evaluates every user; `prepare(i, model)` loads the branches for user i.
  absl::StatusOr<std::vector<UserResult>> EvaluateUsers(
      ModelPool& pool, const MethodSetup& setup, const std::function<absl::Status(size_t, Gpt2LmHead)>& prepare) {
    std::vector<UserResult> out(users_.size());
    absl::Status s = pool.ParallelFor(static_cast<int64_t>(users_.size()), [&](int64_t k, int, Gpt2LmHead model) {
      const size_t i = static_cast<size_t>(k);
      model->SetBranchEnabled(LoraBranch::kGlobal, setup.global);
      model->SetBranchEnabled(LoraBranch::kResidual, setup.residual);
      if (absl::Status p = prepare(i, model); !p.ok()) return p;
      std::vector<int32_t> tokens = ByteTokenizer::Encode(users_[i].test);
      absl::StatusOr<EvalResult> e = Evaluate(model, tokens, seq_len_, 16, c_.eval_tokens);
      if (!e.ok()) return e.status();
      UserResult& u = out[i];
      u.user_id = users_[i].id;
      u.train_bytes = static_cast<int64_t>(users_[i].train.size());
      u.test_bytes = static_cast<int64_t>(users_[i].test.size());
      u.loss = e->loss;
      u.perplexity = e->perplexity;
      u.accuracy = e->accuracy;
      u.eval_tokens = e->tokens;
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return out;
  }

  static EvalSummary Mean(const std::vector<UserResult>& users) {
    EvalSummary e;
    for (const UserResult& u : users) {
      e.loss += u.loss;
      e.accuracy += u.accuracy;
    }
    e.loss /= static_cast<double>(users.size());
    e.accuracy /= static_cast<double>(users.size());
    e.perplexity = std::exp(e.loss);
    return e;
  }

  void Emit(RoundRecord record) {
    result_.rounds.push_back(record);
    if (hooks_.on_round) hooks_.on_round(record);
  }

  // Round 0 of any method: evaluates the starting point into `eval` and
  // emits its record.
  absl::Status OpenRounds(Method m, const std::function<absl::StatusOr<std::vector<UserResult>>()>& evaluate,
                          absl::StatusOr<std::vector<UserResult>>& eval) {
    eval = evaluate();
    if (!eval.ok()) return eval.status();
    RoundRecord start;
    start.method = m;
    start.eval = Mean(*eval);
    Emit(start);
    return absl::OkStatus();
  }

  // Ends a round of any method: evaluates when due (`eval` keeps the latest
  // per-user results), counts the round, emits its record, moves the bar.
  absl::Status CloseRound(int64_t round, RoundRecord& rec,
                          const std::function<absl::StatusOr<std::vector<UserResult>>()>& evaluate,
                          absl::StatusOr<std::vector<UserResult>>& eval, MethodResult& r, ProgressBar& bar,
                          bool shares_updates, bool last = false) {
    if (last || EvaluatedAfter(round)) {
      eval = evaluate();
      if (!eval.ok()) return eval.status();
      rec.eval = Mean(*eval);
    }
    (rec.committed ? r.rounds_committed : r.rounds_aborted) += 1;
    Emit(rec);
    std::string status = rec.eval ? absl::StrFormat("acc %.4f", rec.eval->accuracy) : "";
    if (shares_updates) absl::StrAppend(&status, status.empty() ? "" : " ", absl::StrFormat("eps %.2f", rec.epsilon));
    bar.Update(round, status);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ModelPool>> Pool(const MethodSetup& setup) {
    return ModelPool::Create(base_, setup.lora, workers_, cores_);
  }

  absl::Status RunBase(MethodResult& r) {
    MethodSetup setup = SetupFor(Method::kBase, c_.lora);
    absl::StatusOr<std::unique_ptr<ModelPool>> pool = Pool(setup);
    if (!pool.ok()) return pool.status();
    absl::StatusOr<std::vector<UserResult>> eval =
        EvaluateUsers(**pool, setup, [](size_t, Gpt2LmHead) { return absl::OkStatus(); });
    if (!eval.ok()) return eval.status();
    r.users = *eval;
    // No training: the same figures at the start and the end, for the plots.
    for (int64_t round : {int64_t{0}, c_.rounds}) {
      RoundRecord rec;
      rec.method = Method::kBase;
      rec.round = round;
      rec.eval = Mean(r.users);
      Emit(rec);
    }
    return absl::OkStatus();
  }

  LocalTrainingOptions LocalOptions(Method m) const {
    LocalTrainingOptions o = c_.local;
    o.seed = Derive(c_.seed, "local-training");
    o.noise_seed = Derive(c_.seed, "client-noise");
    if (m != Method::kGlobalResidual) {
      // Methods with one trained adapter spend the whole local budget on it.
      o.global_steps = c_.local.global_steps + c_.local.residual_steps;
      o.residual_steps = 0;
    }
    return o;
  }

  absl::Status RunFederated(Method m, MethodResult& r) {
    const MethodSetup setup = SetupFor(m, c_.lora);
    absl::StatusOr<std::unique_ptr<ModelPool>> pool = Pool(setup);
    if (!pool.ok()) return pool.status();
    FederationSettings fs;
    absl::StatusOr<RoundSettings> settings = c_.FederatedRoundSettings(
        static_cast<size_t>((*pool)->model(0)->BranchLayout(LoraBranch::kGlobal).total_size()),
        static_cast<int64_t>(users_.size()));
    if (!settings.ok()) return settings.status();
    fs.runtime.round = std::move(*settings);
    RoundSettings& rs = fs.runtime.round;
    r.noise_multiplier = rs.noise_multiplier;
    rs.seed = Derive(c_.seed, "rounds");
    if (setup.lora.train_global_a) {
      absl::StatusOr<std::vector<float>> initial = InitialGlobalAdapter(base_->config(), setup.lora);
      if (!initial.ok()) return initial.status();
      rs.initial_global = std::move(*initial);
    }
    fs.runtime.stage_timeout_ms = 1000;
    fs.runtime.liveness_timeout_ms = int64_t{1} << 50;  // virtual users never go away
    fs.local = LocalOptions(m);
    fs.local.allow_plain_aggregation = !c_.secure_agg;
    fs.dropout = c_.dropout;
    fs.seed = Derive(c_.seed, "dropout");
    std::vector<VirtualUser> vusers;
    for (const SimUser& u : users_) vusers.push_back({u.id, u.train});
    const std::string state_dir =
        (std::filesystem::path(c_.out) / "state" / MethodFileName(m)).string();
    absl::StatusOr<std::unique_ptr<VirtualFederation>> fed =
        VirtualFederation::Create(pool->get(), state_dir, std::move(vusers), fs);
    if (!fed.ok()) return fed.status();
    auto evaluate = [&]() {
      const std::vector<float> global = (*fed)->GlobalAdapter();
      return EvaluateUsers(**pool, setup, [&](size_t i, Gpt2LmHead model) {
        if (absl::Status s = model->LoadBranch(LoraBranch::kGlobal, global); !s.ok()) return s;
        return setup.residual ? (*fed)->session(i).ActivateResidual(model) : absl::OkStatus();
      });
    };
    absl::StatusOr<std::vector<UserResult>> eval;
    if (absl::Status s = OpenRounds(m, evaluate, eval); !s.ok()) return s;
    ProgressBar bar(MethodName(m), c_.rounds, "round", stderr, hooks_.progress);
    for (int64_t round = 1; round <= c_.rounds; ++round) {
      absl::StatusOr<RoundRecord> rec = (*fed)->RunRound();
      if (!rec.ok()) return rec.status();
      rec->method = m;
      // A round that could not open (a privacy budget spent, too few users)
      // ends the method: in a simulation nothing that decides it changes, so
      // no later round would open either.
      const bool stuck = !rec->committed && rec->sampled == 0;
      if (stuck) {
        r.stopped =
            absl::StrCat("stopped at round ", round, " of ", c_.rounds, ", which could not open",
                         round < c_.rounds ? " (nor could any later one)" : "", ": ", rec->abort_reason);
      }
      if (absl::Status s = CloseRound(round, *rec, evaluate, eval, r, bar, true, stuck); !s.ok()) return s;
      if (stuck) break;
    }
    bar.Finish();
    r.users = *eval;
    for (size_t i = 0; i < r.users.size(); ++i) r.users[i].participations = (*fed)->participations(i);
    return absl::OkStatus();
  }

  // Residual only, never shared: each round the users the coordinator would
  // sample train their own residual for the whole local budget.
  absl::Status RunLocal(MethodResult& r) {
    const MethodSetup setup = SetupFor(Method::kLocal, c_.lora);
    absl::StatusOr<std::unique_ptr<ModelPool>> pool = Pool(setup);
    if (!pool.ok()) return pool.status();
    const LocalTrainingOptions o = LocalOptions(Method::kLocal);
    std::vector<ClientSession> sessions;  // only for their residuals
    std::vector<std::string> ids;
    for (const SimUser& u : users_) {
      absl::StatusOr<ClientSession> s = ClientSession::Create((*pool)->model(0), u.id, [] { return std::vector<int32_t>(); }, o);
      if (!s.ok()) return s.status();
      sessions.push_back(std::move(*s));
      ids.push_back(u.id);
    }
    std::vector<int64_t> participations(users_.size(), 0);
    auto evaluate = [&]() {
      return EvaluateUsers(**pool, setup, [&](size_t i, Gpt2LmHead model) { return sessions[i].ActivateResidual(model); });
    };
    absl::StatusOr<std::vector<UserResult>> eval;
    if (absl::Status s = OpenRounds(Method::kLocal, evaluate, eval); !s.ok()) return s;
    ProgressBar bar(MethodName(Method::kLocal), c_.rounds, "round", stderr, hooks_.progress);
    const uint64_t round_seed = Derive(c_.seed, "rounds");
    for (int64_t round = 1; round <= c_.rounds; ++round) {
      const Clock::time_point t0 = Clock::now();
      std::mt19937_64 gen(RoundSeed(round_seed, round));
      std::vector<std::string> sampled = SampleClients(ids, c_.clients_per_round, gen);
      std::vector<size_t> which;
      for (const std::string& id : sampled) {
        which.push_back(static_cast<size_t>(std::lower_bound(ids.begin(), ids.end(), id) - ids.begin()));
      }
      std::vector<double> seconds(which.size(), 0), by_worker(static_cast<size_t>((*pool)->size()), 0);
      absl::Status s = (*pool)->ParallelFor(static_cast<int64_t>(which.size()), [&](int64_t k, int w, Gpt2LmHead model) {
        const size_t i = which[static_cast<size_t>(k)];
        model->SetBranchEnabled(LoraBranch::kGlobal, false);
        model->SetBranchEnabled(LoraBranch::kResidual, true);
        if (absl::Status a = sessions[i].ActivateResidual(model); !a.ok()) return a;
        const uint64_t seed = o.seed ^ Fnv1a64(absl::StrCat(users_[i].id, "/", round));
        absl::StatusOr<double> secs =
            TrainBranches(model, ByteTokenizer::Encode(users_[i].train), 0, o.global_steps, o, seed);
        if (!secs.ok()) return secs.status();
        seconds[static_cast<size_t>(k)] = *secs;
        by_worker[static_cast<size_t>(w)] += *secs;
        return sessions[i].RestoreResidual(model->FlattenBranch(LoraBranch::kResidual));
      });
      if (!s.ok()) return s;
      for (size_t i : which) ++participations[i];
      RoundRecord rec;
      rec.method = Method::kLocal;
      rec.round = round;
      rec.sampled = rec.contributors = static_cast<int64_t>(which.size());
      rec.client_seconds = std::accumulate(seconds.begin(), seconds.end(), 0.0) / static_cast<double>(which.size());
      rec.training_seconds = *std::max_element(by_worker.begin(), by_worker.end());
      rec.wall_seconds = Since(t0);
      if (absl::Status s = CloseRound(round, rec, evaluate, eval, r, bar, false); !s.ok()) return s;
    }
    bar.Finish();
    r.users = *eval;
    for (size_t i = 0; i < r.users.size(); ++i) r.users[i].participations = participations[i];
    return absl::OkStatus();
  }

  // The global adapter trained on every user's pooled training text, no
  // privacy, for as many steps as all federated clients take together.
  absl::Status RunCentralized(MethodResult& r) {
    const MethodSetup setup = SetupFor(Method::kCentralized, c_.lora);
    absl::StatusOr<std::unique_ptr<ModelPool>> pool = Pool(setup);
    if (!pool.ok()) return pool.status();
    // Training runs on the calling thread with every core, on its own model.
    absl::StatusOr<std::unique_ptr<ModelPool>> trainer_pool = ModelPool::Create(base_, setup.lora, 1, cores_);
    if (!trainer_pool.ok()) return trainer_pool.status();
    Gpt2LmHead model = (*trainer_pool)->model(0);
    model->SetBranchEnabled(LoraBranch::kResidual, false);
    std::vector<int32_t> pooled;
    for (const SimUser& u : users_) {
      std::vector<int32_t> t = ByteTokenizer::Encode(u.train);
      pooled.insert(pooled.end(), t.begin(), t.end());
    }
    const int64_t steps_per_round = c_.clients_per_round * (c_.local.global_steps + c_.local.residual_steps);
    std::vector<torch::Tensor> params = model->BranchParameters(LoraBranch::kGlobal);
    for (auto& p : params) p.set_requires_grad(true);
    TrainOptions t = LocalTrainOptions(c_.local);
    t.steps = steps_per_round * c_.rounds;
    t.learning_rate = c_.local.global_learning_rate;
    t.seed = Derive(c_.seed, "centralized");
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(model, params, std::move(pooled), t);
    if (!trainer.ok()) return trainer.status();
    auto evaluate = [&]() {
      const std::vector<float> global = model->FlattenBranch(LoraBranch::kGlobal);
      return EvaluateUsers(**pool, setup, [&](size_t, Gpt2LmHead m) { return m->LoadBranch(LoraBranch::kGlobal, global); });
    };
    absl::StatusOr<std::vector<UserResult>> eval;
    if (absl::Status s = OpenRounds(Method::kCentralized, evaluate, eval); !s.ok()) return s;
    ProgressBar bar(MethodName(Method::kCentralized), c_.rounds, "round", stderr, hooks_.progress);
    for (int64_t round = 1; round <= c_.rounds; ++round) {
      const Clock::time_point t0 = Clock::now();
      if (absl::Status s = (*trainer)->Run(round * steps_per_round); !s.ok()) return s;
      RoundRecord rec;
      rec.method = Method::kCentralized;
      rec.round = round;
      rec.training_seconds = rec.wall_seconds = Since(t0);
      if (absl::Status s = CloseRound(round, rec, evaluate, eval, r, bar, false); !s.ok()) return s;
    }
    bar.Finish();
    for (auto& p : params) p.set_requires_grad(false);
    r.users = *eval;
    return absl::OkStatus();
  }

  void Summarize(MethodResult& r) {
    r.final_eval = Mean(r.users);
    int64_t n = 0;
    for (const RoundRecord& rec : result_.rounds) {
      if (rec.method != r.method || rec.round == 0 || rec.sampled == 0) continue;
      r.bytes_up_per_client_round += rec.bytes_up_per_client;
      r.bytes_down_per_client_round += rec.bytes_down_per_client;
      r.client_seconds_per_round += rec.client_seconds;
      r.coordinator_seconds_per_round += rec.coordinator_seconds;
      r.epsilon = rec.epsilon;
      r.epsilon_against_coordinator = rec.epsilon_against_coordinator;
      ++n;
    }
    if (n > 0) {
      r.bytes_up_per_client_round /= static_cast<double>(n);
      r.bytes_down_per_client_round /= static_cast<double>(n);
      r.client_seconds_per_round /= static_cast<double>(n);
      r.coordinator_seconds_per_round /= static_cast<double>(n);
    }
  }

  const ExperimentConfig& c_;
  const ExperimentHooks& hooks_;
  Gpt2LmHead base_;
  std::vector<SimUser> users_;
  ExperimentResult& result_;
  int cores_ = 1, workers_ = 1;
  int64_t seq_len_ = 0;
};

// `m` against the method `reference` of the same experiment, if it ran.
std::optional<PairedComparison> CompareWith(const MethodResult& m, const std::vector<MethodResult>& all,
                                            Method reference) {
  for (const MethodResult& ref : all) {
    if (ref.method != reference) continue;
    absl::StatusOr<PairedComparison> c = CompareUsers(m.users, ref.users);
    if (c.ok()) return *c;
  }
  return std::nullopt;
}

// What a method's result depends on besides the method itself (and the
// build): the resolved config without its list of methods, and the users.
nlohmann::json MethodRecordIdentity(const ExperimentResult& result) {
  nlohmann::json config = nlohmann::json::parse(ExperimentConfigToJson(result.config));
  config.erase("methods");
  return RecordIdentity({{"config", config}, {"users", result.users}});
}

// The method an earlier run finished under `identity` (its round records
// appended to `rounds` and passed to the hook); nullopt, saying why under
// `progress` when a record exists, otherwise.
std::optional<MethodResult> FinishedMethod(const std::string& path, const nlohmann::json& identity,
                                           const ExperimentHooks& hooks, std::vector<RoundRecord>& rounds) {
  absl::StatusOr<nlohmann::json> record = ReadFinishedRecord(path, identity);
  MethodResult method;
  std::vector<RoundRecord> records;
  absl::Status s = record.ok() ? MethodRecordFromJson(*record, method, records) : record.status();
  if (!s.ok()) {
    if (hooks.progress && !absl::IsNotFound(s)) {
      std::fprintf(stderr, "%s: %s; running it again\n", path.c_str(), std::string(s.message()).c_str());
    }
    return std::nullopt;
  }
  if (hooks.progress) std::fprintf(stderr, "%s: finished by an earlier run (%s)\n", MethodName(method.method), path.c_str());
  for (const RoundRecord& r : records) {
    if (hooks.on_round) hooks.on_round(r);
    rounds.push_back(r);
  }
  return method;
}

// The simulation holds every user's residual at once; refusing a run that
// cannot hold them beats the kernel's OOM killer hours in.
absl::Status CheckResidualMemory(int64_t users, int64_t residual_values, const LoraConfig& lora) {
  const double need = static_cast<double>(users) * static_cast<double>(residual_values) * sizeof(float);
  const int64_t available = AvailableMemoryBytes();
  if (available <= 0 || need <= static_cast<double>(available)) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%d users' residuals (rank %d, %.1f MiB each) need %.1f GiB, more than the %.1f GiB of memory available; "
      "lower \"users\" or \"lora\".residual_rank",
      users, lora.residual_rank, static_cast<double>(residual_values) * sizeof(float) / (1 << 20), need / (1 << 30),
      static_cast<double>(available) / (1 << 30)));
}

}  // namespace

absl::StatusOr<PairedComparison> CompareUsers(const std::vector<UserResult>& method,
                                              const std::vector<UserResult>& reference) {
  if (method.empty() || method.size() != reference.size()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot pair ", method.size(), " users with ", reference.size()));
  }
  const size_t n = method.size();
  std::vector<double> gains(n);
  PairedComparison c;
  int64_t better = 0;
  for (size_t i = 0; i < n; ++i) {
    if (method[i].user_id != reference[i].user_id) {
      return absl::InvalidArgumentError(absl::StrCat("user ", i, " is '", method[i].user_id, "' in one method and '",
                                                     reference[i].user_id, "' in the other"));
    }
    better += method[i].accuracy > reference[i].accuracy;
    gains[i] = method[i].accuracy - reference[i].accuracy;
    c.mean_gain += gains[i];
  }
  c.share_better = static_cast<double>(better) / static_cast<double>(n);
  c.mean_gain /= static_cast<double>(n);
  if (n > 1) {
    double squares = 0;
    for (double g : gains) squares += (g - c.mean_gain) * (g - c.mean_gain);
    c.standard_error = std::sqrt(squares / static_cast<double>(n - 1) / static_cast<double>(n));
  }
  return c;
}

absl::StatusOr<int64_t> CountFederatedUsers(const ExperimentConfig& config) {
  CorpusOptions corpus_options;
  corpus_options.skip_bad_records = config.skip_bad_records;
  absl::StatusOr<Corpus> corpus = LoadCorpus(config.data, corpus_options);
  if (!corpus.ok()) return corpus.status();
  absl::StatusOr<std::vector<SimUser>> users = SelectUsers(*corpus, config);
  if (!users.ok()) return users.status();
  return static_cast<int64_t>(users->size());
}

absl::StatusOr<ExperimentResult> RunExperiment(const ExperimentConfig& config, const ExperimentHooks& hooks) {
  if (absl::Status s = config.Validate(); !s.ok()) return s;
  if (absl::Status s = config.ValidateForModel(); !s.ok()) return s;
  const Clock::time_point start = Clock::now();
  ExperimentResult result;
  result.config = config;
  ExperimentConfig& c = result.config;
  c.base = c.EffectiveBase();
  c.min_clients = c.EffectiveMinClients();
  c.eval_every = c.EffectiveEvalEvery();
  CorpusOptions corpus_options;
  corpus_options.skip_bad_records = c.skip_bad_records;
  absl::StatusOr<Corpus> corpus = LoadCorpus(c.data, corpus_options);
  if (!corpus.ok()) return corpus.status();
  result.corpus_users = static_cast<int64_t>(corpus->users.size());
  result.corpus_problems = corpus->problems;

  absl::StatusOr<std::vector<SimUser>> users = SelectUsers(*corpus, c);
  if (!users.ok()) return users.status();
  for (const SimUser& u : *users) result.users.push_back(u.id);
  // Now that the users are known (with "users": 0 they were not), before
  // the pretraining.
  if (absl::Status s = c.ValidateForModel(static_cast<int64_t>(users->size())); !s.ok()) return s;
  // The base model: reuse, or pretrain on every user that does not federate.
  result.base_model = c.base;
  if (!std::filesystem::exists(std::filesystem::path(c.base) / "model.safetensors")) {
    PretrainOptions p;
    p.corpus = c.pretrain.corpus.empty() ? c.data : c.pretrain.corpus;
    p.skip_bad_records = c.skip_bad_records;
    p.config = c.pretrain.config;
    p.out = c.base;
    if (c.pretrain.corpus.empty()) p.exclude_users = result.users;
    p.steps = c.pretrain.steps;
    p.batch_size = c.pretrain.batch_size;
    p.learning_rate = c.pretrain.learning_rate;
    p.train_fraction = c.train_fraction;
    p.seed = Derive(c.seed, "pretrain");
    p.progress = hooks.progress;
    absl::StatusOr<PretrainResult> pretrained = RunPretrain(p);
    if (!pretrained.ok()) return absl::Status(pretrained.status().code(),
                                              absl::StrCat("pretraining the base model: ", pretrained.status().message()));
    result.pretrained_here = true;
  }
  absl::StatusOr<Gpt2LmHead> base = LoadBaseModel(c.base, c.lora);
  if (!base.ok()) return base.status();
  result.global_values = (*base)->BranchLayout(LoraBranch::kGlobal).total_size();
  result.residual_values = (*base)->BranchLayout(LoraBranch::kResidual).total_size();
  for (Method m : c.methods) {
    if (m != Method::kGlobal && m != Method::kGlobalResidual && m != Method::kFedAvgLora) continue;
    // fedavg-lora's rounds carry A_g too: a longer vector, its own ring.
    absl::StatusOr<FlatLayout> layout = GlobalAdapterLayout((*base)->config(), SetupFor(m, c.lora).lora);
    if (!layout.ok()) return layout.status();
    absl::StatusOr<RoundSettings> settings = c.FederatedRoundSettings(
        static_cast<size_t>(layout->total_size()), static_cast<int64_t>(users->size()));
    if (!settings.ok()) {
      return absl::Status(settings.status().code(), absl::StrCat("experiment config (", MethodName(m),
                                                                 "): ", settings.status().message()));
    }
    if (c.target_epsilon > 0 && hooks.progress) {
      std::fprintf(stderr, "%s: noise multiplier %.4g keeps epsilon within %g after %ld rounds\n",
                   MethodName(m), settings->noise_multiplier, c.target_epsilon, static_cast<long>(c.rounds));
    }
    std::string w = DiscreteNoiseWarning(*settings, static_cast<size_t>(layout->total_size()));
    if (w.empty()) continue;
    w = absl::StrCat(MethodName(m), ": ", w);
    if (hooks.progress) std::fprintf(stderr, "warning: %s\n", w.c_str());
    result.warnings.push_back(std::move(w));
  }
  if (absl::Status s = CheckResidualMemory(static_cast<int64_t>(users->size()), result.residual_values, c.lora);
      !s.ok()) {
    return s;
  }
  Runner runner(c, hooks, *base, std::move(*users), result);
  const nlohmann::json identity = MethodRecordIdentity(result);
  for (Method m : c.methods) {
    const std::string record_path = (fs::path(c.out) / "methods" / (MethodFileName(m) + ".json")).string();
    if (hooks.reuse_finished) {
      if (std::optional<MethodResult> done = FinishedMethod(record_path, identity, hooks, result.rounds)) {
        result.methods.push_back(std::move(*done));
        continue;
      }
    }
    absl::StatusOr<MethodResult> r = runner.Run(m);
    if (!r.ok()) return r.status();
    std::vector<RoundRecord> rounds;
    for (const RoundRecord& rec : result.rounds) {
      if (rec.method == m) rounds.push_back(rec);
    }
    if (absl::Status s = WriteFinishedRecord(record_path, identity, MethodRecordJson(*r, rounds)); !s.ok()) return s;
    result.methods.push_back(std::move(*r));
  }
  for (MethodResult& m : result.methods) {
    m.over_global = CompareWith(m, result.methods, Method::kGlobal);
    m.over_base = CompareWith(m, result.methods, Method::kBase);
  }
  result.wall_seconds = Since(start);
  return result;
}

}  // namespace fedpers
