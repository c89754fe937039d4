#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/corpus.h"
#include "common/model/checkpoint.h"
#include "common/model/jobs.h"
#include "common/model/peft_export.h"
#include "common/model/trainer.h"
#include "common/portable_prg.h"
#include "common/progress.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

EvalMetrics ToMetrics(const EvalResult& r) { return {r.loss, r.perplexity, r.accuracy, r.tokens}; }

nlohmann::json MetricsJson(const EvalMetrics& m) {
  return {{"loss", m.loss}, {"perplexity", m.perplexity}, {"accuracy", m.accuracy}, {"tokens", m.tokens}};
}

}  // namespace

absl::StatusOr<FinetuneResult> RunFinetune(const FinetuneOptions& o) {
  if (o.base.empty() || o.data.empty() || o.user.empty() || o.out.empty()) {
    return absl::InvalidArgumentError("finetune needs --base, --data, --user and --out");
  }
  if (!o.train_global && !o.train_residual) {
    return absl::InvalidArgumentError("finetune: nothing to train (both --no-global and --no-residual)");
  }
  if (o.eval_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("finetune: --eval-tokens must be >= 0 (0: all), got ", o.eval_tokens));
  }
  LoraConfig lora = o.lora;
  lora.global_enabled = lora.global_enabled && o.train_global;
  lora.residual_enabled = lora.residual_enabled && o.train_residual;
  FEDPERS_RETURN_IF_ERROR(lora.Validate());
  FEDPERS_ASSIGN_OR_RETURN(Corpus corpus, LoadCorpus(o.data));
  const UserText* user = corpus.Find(o.user);
  if (user == nullptr) {
    std::string some;
    for (size_t i = 0; i < corpus.users.size() && i < 5; ++i) absl::StrAppend(&some, i ? ", " : "", corpus.users[i].user_id);
    return absl::NotFoundError(absl::StrCat("user '", o.user, "' is not in corpus '", corpus.spec, "' (",
                                            corpus.users.size(), " users, e.g. ", some, ")"));
  }
  FEDPERS_ASSIGN_OR_RETURN(Gpt2LmHead model, LoadBaseModel(o.base, lora));
  if (model->config().tokenizer != "byte") {
    return absl::UnimplementedError("finetune on text needs a byte-level base model");
  }
  TextSplit split = SplitTrainTest(user->text, o.train_fraction);
  std::vector<int32_t> train = ByteTokenizer::Encode(split.train);
  std::vector<int32_t> test = ByteTokenizer::Encode(split.test);
  FinetuneResult result;
  result.user = o.user;
  result.train_tokens = static_cast<int64_t>(train.size());
  result.test_tokens = static_cast<int64_t>(test.size());
  if (split.test.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("user '", o.user, "' has too little text for a held-out split"));
  }

  // A user's residual starts from their own seed: the same user gets the
  // same initial A_u on every machine.
  model->ResetResidual(Fnv1a64(o.user) ^ o.seed);
  FEDPERS_ASSIGN_OR_RETURN(EvalResult before, Evaluate(model, test, 0, 16, o.eval_tokens));
  result.before = ToMetrics(before);

  std::vector<torch::Tensor> params;
  for (LoraBranch b : {LoraBranch::kGlobal, LoraBranch::kResidual}) {
    for (torch::Tensor& t : model->BranchParameters(b)) {
      params.push_back(t);
      result.trainable_parameters += t.numel();
    }
  }
  TrainOptions topt;
  topt.steps = o.steps;
  topt.batch_size = o.batch_size;
  topt.micro_batch_size = o.micro_batch_size;
  topt.recompute_activations = o.recompute_activations;
  topt.learning_rate = o.learning_rate;
  topt.seed = o.seed;
  FEDPERS_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(model, params, train, topt));
  ProgressBar bar(absl::StrCat("finetune ", o.user), o.steps, "step", stderr, o.progress);
  const auto start = std::chrono::steady_clock::now();
  double ema = 0;
  FEDPERS_RETURN_IF_ERROR(trainer->Run(o.steps, [&](const StepStats& s) {
    ema = ema == 0 ? s.loss : 0.9 * ema + 0.1 * s.loss;
    bar.Update(s.step, absl::StrFormat("loss %.3f", ema));
    return true;
  }));
  bar.Finish(absl::StrFormat("loss %.3f", ema));
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  FEDPERS_ASSIGN_OR_RETURN(EvalResult after, Evaluate(model, test, 0, 16, o.eval_tokens));
  result.after = ToMetrics(after);

  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", o.out, "': ", ec.message()));
  if (lora.global_enabled) {
    FEDPERS_RETURN_IF_ERROR(SaveAdapter(model, LoraBranch::kGlobal, o.out + "/adapter_global.safetensors"));
    FEDPERS_RETURN_IF_ERROR(ExportPeftAdapter(model, PeftExportKind::kGlobal, o.out + "/peft_global", o.base));
    result.written.push_back(o.out + "/adapter_global.safetensors");
    result.written.push_back(o.out + "/peft_global/");
  }
  if (lora.residual_enabled) {
    FEDPERS_RETURN_IF_ERROR(SaveAdapter(model, LoraBranch::kResidual, o.out + "/adapter_residual.safetensors"));
    result.written.push_back(o.out + "/adapter_residual.safetensors");
  }
  if (lora.global_enabled && lora.residual_enabled) {
    FEDPERS_RETURN_IF_ERROR(
        ExportPeftAdapter(model, PeftExportKind::kGlobalPlusResidual, o.out + "/peft_global_residual", o.base));
    result.written.push_back(o.out + "/peft_global_residual/");
  }
  nlohmann::json summary = {{"user", o.user},
                            {"base", o.base},
                            {"data", corpus.spec},
                            {"train_tokens", result.train_tokens},
                            {"test_tokens", result.test_tokens},
                            {"trainable_parameters", result.trainable_parameters},
                            {"before", MetricsJson(result.before)},
                            {"after", MetricsJson(result.after)},
                            {"seconds", result.seconds},
                            {"lora", nlohmann::json::parse(LoraConfigToJson(lora))}};
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(o.out + "/finetune_summary.json", summary.dump(2) + "\n"));
  result.written.push_back(o.out + "/finetune_summary.json");
  return result;
}

}  // namespace fedpers
