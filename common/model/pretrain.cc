#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/corpus.h"
#include "common/model/checkpoint.h"
#include "common/model/jobs.h"
#include "common/model/trainer.h"
#include "common/progress.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

std::atomic<bool> g_interrupted{false};

void OnInterrupt(int) { g_interrupted.store(true); }

// Ctrl-C (SIGINT) and SIGTERM stop training at the next step boundary, so the
// run writes a checkpoint and can resume. Restores the previous handlers.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupted.store(false);
    old_int_ = std::signal(SIGINT, OnInterrupt);
    old_term_ = std::signal(SIGTERM, OnInterrupt);
  }
  ~InterruptGuard() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }

 private:
  void (*old_int_)(int);
  void (*old_term_)(int);
};

// The options a checkpoint must share with the run that resumes it.
nlohmann::json RunIdentity(const PretrainOptions& o, const ModelConfig& c) {
  return {{"corpus", o.corpus},     {"config", ModelConfigToJson(c)}, {"steps", o.steps},
          {"batch_size", o.batch_size}, {"learning_rate", o.learning_rate},
          {"weight_decay", o.weight_decay}, {"seed", o.seed}, {"train_fraction", o.train_fraction},
          {"exclude_users", o.exclude_users}};
}


// Writes checkpoint-<step>/ completely, then points `latest` at it, then
// removes older checkpoints: a crash leaves the previous one usable.
absl::Status WriteCheckpoint(Gpt2LmHead& model, const Trainer& trainer, const std::string& out,
                             const nlohmann::json& identity, int64_t step, double train_loss) {
  const std::string dir = absl::StrCat(out, "/checkpoint-", step);
  FEDPERS_RETURN_IF_ERROR(SaveBaseModel(model, dir));
  FEDPERS_RETURN_IF_ERROR(trainer.SaveState(dir + "/optimizer.pt"));
  // The last step's loss, so that a rerun of a finished run can report it.
  nlohmann::json state = {{"step", step}, {"identity", identity}, {"train_loss", train_loss}};
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(dir + "/state.json", state.dump(2)));
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(out + "/latest", absl::StrCat("checkpoint-", step, "\n")));
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(out, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("checkpoint-", 0) == 0 && name != absl::StrCat("checkpoint-", step)) {
      fs::remove_all(entry.path(), ec);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PretrainResult> RunPretrain(const PretrainOptions& o) {
  if (o.out.empty()) return absl::InvalidArgumentError("pretrain: --out is required");
  if (o.steps <= 0) return absl::InvalidArgumentError("pretrain: --steps must be positive");
  if (o.checkpoint_every <= 0) return absl::InvalidArgumentError("pretrain: --checkpoint-every must be positive");
  if (o.eval_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("pretrain: --eval-tokens must be >= 0, got ", o.eval_tokens));
  }
  if (!(o.train_fraction > 0 && o.train_fraction < 1)) {
    return absl::InvalidArgumentError("pretrain: --train-fraction must be in (0, 1)");
  }
  FEDPERS_ASSIGN_OR_RETURN(ModelConfig config, ResolveModelConfig(o.config));
  if (config.tokenizer != "byte") {
    return absl::InvalidArgumentError(
        absl::StrCat("pretrain trains byte-level models: the config '", o.config,
                     "' must say \"fedpers_tokenizer\": \"byte\" (with vocab_size >= 259)"));
  }
  CorpusOptions corpus_options;
  corpus_options.skip_bad_records = o.skip_bad_records;
  FEDPERS_ASSIGN_OR_RETURN(Corpus corpus, LoadCorpus(o.corpus, corpus_options));
  std::vector<int32_t> train, test;
  PretrainResult result;
  const std::set<std::string> excluded(o.exclude_users.begin(), o.exclude_users.end());
  for (const std::string& user : excluded) {
    // A misspelt exclusion would pretrain on the user it meant to keep out.
    if (corpus.Find(user) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("pretrain: the excluded user '", user, "' is not in ", corpus.spec));
    }
  }
  for (const UserText& u : corpus.users) {
    if (excluded.count(u.user_id)) continue;
    TextSplit split = SplitTrainTest(u.text, o.train_fraction);
    std::vector<int32_t> a = ByteTokenizer::Encode(split.train);
    std::vector<int32_t> b = ByteTokenizer::Encode(split.test);
    train.insert(train.end(), a.begin(), a.end());
    test.insert(test.end(), b.begin(), b.end());
    ++result.users;
  }
  if (result.users == 0) return absl::InvalidArgumentError("pretrain: every user of the corpus is excluded");
  result.train_tokens = static_cast<int64_t>(train.size());

  torch::manual_seed(o.seed);
  LoraConfig no_lora;
  no_lora.global_enabled = true;  // branches exist but stay off while pretraining
  FEDPERS_ASSIGN_OR_RETURN(Gpt2LmHead model, CreateGpt2(config, no_lora));
  model->SetBranchEnabled(LoraBranch::kGlobal, false);
  model->SetBranchEnabled(LoraBranch::kResidual, false);
  model->InitBaseWeights();
  model->SetBaseTrainable(true);
  std::vector<torch::Tensor> params;
  for (auto& [name, p] : model->BaseParameters()) params.push_back(p);
  result.parameters = config.NumParameters();

  TrainOptions topt;
  topt.steps = o.steps;
  topt.batch_size = o.batch_size;
  topt.micro_batch_size = o.micro_batch_size;
  topt.recompute_activations = o.recompute_activations;
  topt.learning_rate = o.learning_rate;
  topt.weight_decay = o.weight_decay;
  topt.beta2 = 0.99;
  topt.seed = o.seed;
  FEDPERS_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(model, params, train, topt));

  const nlohmann::json identity = RunIdentity(o, config);
  std::error_code ec;
  fs::create_directories(o.out, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", o.out, "': ", ec.message()));
  if (o.resume && fs::exists(o.out + "/latest")) {
    FEDPERS_ASSIGN_OR_RETURN(std::string latest, ReadFileToString(o.out + "/latest"));
    while (!latest.empty() && std::isspace(static_cast<unsigned char>(latest.back()))) latest.pop_back();
    if (latest.empty() || latest.find('/') != std::string::npos) {
      return absl::DataLossError(absl::StrCat("'", o.out,
                                              "/latest' should name a checkpoint directory, holds '", latest,
                                              "' (--no-resume starts over)"));
    }
    const std::string dir = o.out + "/" + latest;
    FEDPERS_ASSIGN_OR_RETURN(std::string state_text, ReadFileToString(dir + "/state.json"));
    nlohmann::json state = nlohmann::json::parse(state_text, nullptr, false);
    if (state.is_discarded() || !state.is_object() || !state.contains("step") ||
        !state.contains("identity")) {
      return absl::DataLossError(absl::StrCat("checkpoint '", dir, "' has an unreadable state.json"));
    }
    if (!state["step"].is_number_integer() || state["step"].get<int64_t>() < 0 ||
        state["step"].get<int64_t>() > o.steps) {
      return absl::DataLossError(absl::StrCat("checkpoint '", dir, "/state.json' says step ",
                                              state["step"].dump(), ", not one of this run's 0 to ", o.steps,
                                              " (--no-resume starts over)"));
    }
    if (state["identity"] != identity) {
      return absl::FailedPreconditionError(absl::StrCat(
          "'", o.out, "' holds a checkpoint of a run with other options (corpus, config, steps, batch, "
          "learning rate or seed); pass the same options, another --out, or --no-resume"));
    }
    FEDPERS_ASSIGN_OR_RETURN(Gpt2LmHead loaded, LoadBaseModel(dir, no_lora));
    {
      torch::NoGradGuard no_grad;
      auto src = loaded->BaseParameters();
      auto dst = model->BaseParameters();
      for (size_t i = 0; i < dst.size(); ++i) dst[i].second.copy_(src[i].second);
    }
    result.resumed_at_step = state["step"].get<int64_t>();
    result.already_complete = result.resumed_at_step == o.steps;
    // Checkpoints before 2026-11-25 did not record it.
    if (state.contains("train_loss") && state["train_loss"].is_number()) {
      result.final_train_loss = state["train_loss"].get<double>();
    }
    FEDPERS_RETURN_IF_ERROR(trainer->LoadState(dir + "/optimizer.pt", result.resumed_at_step));
    if (o.progress && result.already_complete) {
      std::fprintf(stderr, "pretrain: '%s' already holds all %ld steps; evaluating it\n", o.out.c_str(),
                   static_cast<long>(o.steps));
    } else if (o.progress) {
      std::fprintf(stderr, "pretrain: resuming from %s at step %ld of %ld\n", dir.c_str(),
                   static_cast<long>(result.resumed_at_step), static_cast<long>(o.steps));
    }
  }

  InterruptGuard interrupt_guard;
  ProgressBar bar("pretrain", o.steps, "step", stderr, o.progress && !result.already_complete);
  const auto start = std::chrono::steady_clock::now();
  int64_t tokens_done = 0;
  double ema_loss = 0;
  while (trainer->next_step() < o.steps) {
    const int64_t until = std::min(o.steps, (trainer->next_step() / o.checkpoint_every + 1) * o.checkpoint_every);
    FEDPERS_RETURN_IF_ERROR(trainer->Run(until, [&](const StepStats& s) {
      tokens_done += s.tokens;
      ema_loss = ema_loss == 0 ? s.loss : 0.95 * ema_loss + 0.05 * s.loss;
      result.final_train_loss = s.loss;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      bar.Update(s.step, absl::StrFormat("smoothed loss %.3f | %.0f tok/s", ema_loss,
                                         tokens_done / std::max(secs, 1e-9)));
      return !g_interrupted.load();
    }));
    FEDPERS_RETURN_IF_ERROR(
        WriteCheckpoint(model, *trainer, o.out, identity, trainer->next_step(), result.final_train_loss));
    if (g_interrupted.load()) {
      bar.Finish("interrupted");
      return absl::CancelledError(absl::StrCat("interrupted at step ", trainer->next_step(), " of ", o.steps,
                                               "; checkpoint written to '", o.out,
                                               "'. Run the same command again to resume."));
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.tokens_per_second = tokens_done / std::max(result.seconds, 1e-9);
  if (!result.already_complete) bar.Finish(absl::StrFormat("smoothed loss %.3f", ema_loss));
  result.steps = trainer->next_step();
  model->SetBaseTrainable(false);
  FEDPERS_RETURN_IF_ERROR(SaveBaseModel(model, o.out));
  FEDPERS_ASSIGN_OR_RETURN(EvalResult eval, Evaluate(model, test, 0, 16, o.eval_tokens));
  result.eval = {eval.loss, eval.perplexity, eval.accuracy, eval.tokens};
  result.model_dir = o.out;
  return result;
}

}  // namespace fedpers
