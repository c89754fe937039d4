// The model-core jobs behind `fedpers pretrain` and `fedpers finetune`.
// Torch-free header, so the CLI compiles without libtorch.
#ifndef FEDPERS_COMMON_MODEL_JOBS_H_
#define FEDPERS_COMMON_MODEL_JOBS_H_

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"

namespace fedpers {

struct EvalMetrics {
  double loss = 0, perplexity = 0, accuracy = 0;
  int64_t tokens = 0;
};

struct PretrainOptions {
  std::string corpus = "debian-changelogs";
  std::string config = "tiny";  // a named config, or a path to a config.json
  std::string out;              // model directory (required)
  std::vector<std::string> exclude_users;  // kept out of pretraining
  int64_t steps = 2000;
  int64_t batch_size = 16;
  // Memory settings (TrainOptions); they do not change the run's identity,
  // so a checkpoint resumes under other values.
  int64_t micro_batch_size = 0;
  bool recompute_activations = false;
  double learning_rate = 3e-3;
  double weight_decay = 0.01;
  int64_t checkpoint_every = 250;
  int64_t eval_tokens = 32768;  // held-out tokens evaluated at the end
  double train_fraction = 0.8;
  uint64_t seed = 1;
  bool resume = true;  // continue from the checkpoint in `out` if one is there
  bool skip_bad_records = false;  // skip malformed corpus records instead of failing
  bool progress = true;
};

struct PretrainResult {
  std::string model_dir;
  int64_t steps = 0;
  int64_t resumed_at_step = 0;  // 0 when started fresh
  bool already_complete = false;  // `out` held every step: only evaluated
  int64_t users = 0, train_tokens = 0, parameters = 0;
  // The last step's loss; NaN for a finished run whose checkpoint predates
  // recording it.
  double final_train_loss = std::numeric_limits<double>::quiet_NaN();
  EvalMetrics eval;
  double seconds = 0, tokens_per_second = 0;
};

// Trains a base model from scratch on the train split of every user of the
// corpus, writing a checkpoint every `checkpoint_every` steps and the final
// model into `out`. Resumes from the latest complete checkpoint when asked;
// a checkpoint from a run with other options is an error.
absl::StatusOr<PretrainResult> RunPretrain(const PretrainOptions& options);

struct FinetuneOptions {
  std::string base;  // model directory
  std::string data;  // corpus spec
  std::string user;  // user id in the corpus
  std::string out;   // output directory
  bool train_global = true;
  bool train_residual = true;
  LoraConfig lora;
  int64_t steps = 200;
  int64_t batch_size = 16;
  int64_t micro_batch_size = 0;  // memory settings (TrainOptions)
  bool recompute_activations = false;
  double learning_rate = 2e-3;
  double train_fraction = 0.8;
  int64_t eval_tokens = 0;  // 0: the whole held-out text
  uint64_t seed = 1;
  bool progress = true;
};

struct FinetuneResult {
  std::string user;
  int64_t train_tokens = 0, test_tokens = 0;
  int64_t trainable_parameters = 0;
  EvalMetrics before, after;
  double seconds = 0;
  std::vector<std::string> written;  // files and directories written
};

// Trains one user's LoRA branches on their train split, evaluates on their
// held-out split before and after, and writes the adapters (fedpers format)
// and the PEFT export(s) into `out`.
absl::StatusOr<FinetuneResult> RunFinetune(const FinetuneOptions& options);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_JOBS_H_
