// Local training and evaluation of a Gpt2LmHead on token streams.
#ifndef FEDPERS_COMMON_MODEL_TRAINER_H_
#define FEDPERS_COMMON_MODEL_TRAINER_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/gpt2.h"

namespace fedpers {

struct TrainOptions {
  int64_t steps = 100;
  int64_t batch_size = 16;
  // Windows per forward/backward pass; 0 or >= batch_size: the whole batch at
  // once. A step's gradient is accumulated over its micro-batches, each
  // weighted by its share of the batch's target tokens, so it is the
  // gradient of the same batch mean (equal up to float summation order).
  // Activation memory scales with this, not with batch_size.
  int64_t micro_batch_size = 0;
  // Keep only each block's input during the forward pass and recompute the
  // rest in backward (Gpt2TransformerImpl::set_recompute_activations): about
  // n_layer times less activation memory for one more forward pass.
  bool recompute_activations = false;
  int64_t seq_len = 0;  // 0: the model's n_positions
  double learning_rate = 1e-3;
  double min_lr_ratio = 0.1;  // cosine decays to learning_rate * min_lr_ratio
  int64_t warmup_steps = -1;  // -1: 5% of steps
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
  double grad_clip = 1.0;  // global L2 norm; <= 0 disables
  uint64_t seed = 1;
  absl::Status Validate() const;
};

struct StepStats {
  int64_t step = 0;  // 1-based, after the update
  double loss = 0;
  double learning_rate = 0;
  double grad_norm = 0;
  int64_t tokens = 0;  // target tokens in this step's batch
};

// Linear warmup then cosine decay; pure function of the step.
double ScheduledLearningRate(const TrainOptions& options, int64_t step);

// Random fixed-length windows over a token stream. A window is seq_len + 1
// tokens (inputs and shifted targets); streams shorter than that are padded
// with PAD, which the loss ignores. Batch k depends only on (seed, k), so a
// resumed run sees the same batches. Thread-compatible.
class WindowSampler {
 public:
  WindowSampler(std::vector<int32_t> tokens, int64_t seq_len, uint64_t seed);
  // Inputs and targets, each [batch, seq_len] int64.
  std::pair<torch::Tensor, torch::Tensor> Batch(int64_t batch_index, int64_t batch_size) const;
  int64_t num_tokens() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  std::vector<int32_t> tokens_;
  int64_t seq_len_;
  uint64_t seed_;
};

// Parameters trained at `lr_scale` times the scheduled learning rate (e.g.
// a user's residual beside the global adapter in one optimizer).
struct ParamGroup {
  std::vector<torch::Tensor> params;
  double lr_scale = 1.0;
};

// Trains `params` of `model` with AdamW, gradient clipping and the warmup +
// cosine schedule. Owns its optimizer state. Not thread-safe; libtorch uses
// the process's intra-op threads.
class Trainer {
 public:
  // InvalidArgument on bad options, an empty parameter list or no tokens.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(Gpt2LmHead model, std::vector<torch::Tensor> params,
                                                         std::vector<int32_t> train_tokens,
                                                         TrainOptions options);
  // The same with several groups (one optimizer; the gradient is clipped over
  // all of them together). InvalidArgument also on a non-positive lr_scale.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(Gpt2LmHead model, std::vector<ParamGroup> groups,
                                                         std::vector<int32_t> train_tokens,
                                                         TrainOptions options);

  // Runs steps [next_step(), until); calls `on_step` after each (return false
  // to stop early). Catches libtorch errors into a Status; a non-finite loss
  // is an error (the parameters are left as they were before that step's
  // update).
  absl::Status Run(int64_t until, const std::function<bool(const StepStats&)>& on_step = {});
  int64_t next_step() const { return next_step_; }
  const TrainOptions& options() const { return options_; }

  // Optimizer state for resuming (step counter included).
  absl::Status SaveState(const std::string& path) const;
  absl::Status LoadState(const std::string& path, int64_t next_step);

 private:
  Trainer(Gpt2LmHead model, std::vector<ParamGroup> groups, std::vector<int32_t> tokens, TrainOptions options);
  Gpt2LmHead model_;
  std::vector<torch::Tensor> params_;  // every group's, for clipping
  std::vector<double> lr_scales_;      // per optimizer param group
  WindowSampler sampler_;
  TrainOptions options_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t next_step_ = 0;
};

struct EvalResult {
  double loss = 0;        // mean token cross-entropy (nats)
  double perplexity = 0;  // exp(loss)
  double accuracy = 0;    // next-token top-1
  int64_t tokens = 0;     // predicted tokens
};

// Evaluates on consecutive non-overlapping windows covering `tokens`, each
// token predicted once. `max_tokens` > 0 evaluates only a prefix of that many.
absl::StatusOr<EvalResult> Evaluate(Gpt2LmHead& model, const std::vector<int32_t>& tokens,
                                    int64_t seq_len = 0, int64_t batch_size = 16, int64_t max_tokens = 0);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_MODEL_TRAINER_H_
