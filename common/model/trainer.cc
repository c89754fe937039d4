#include "common/model/trainer.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/host_memory.h"
#include "common/portable_prg.h"
#include "common/status.h"
#include "common/tokenizer.h"

namespace fedpers {

absl::Status TrainOptions::Validate() const {
  if (steps < 0) return absl::InvalidArgumentError("steps must be >= 0");
  if (batch_size <= 0) return absl::InvalidArgumentError("batch_size must be positive");
  if (micro_batch_size < 0) return absl::InvalidArgumentError("micro_batch_size must be >= 0");
  if (seq_len < 0) return absl::InvalidArgumentError("seq_len must be >= 0");
  if (!(learning_rate > 0) || !std::isfinite(learning_rate)) {
    return absl::InvalidArgumentError(absl::StrCat("learning_rate must be positive and finite, got ", learning_rate));
  }
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1)) return absl::InvalidArgumentError("min_lr_ratio must be in [0, 1]");
  if (!(weight_decay >= 0) || !std::isfinite(weight_decay)) {
    return absl::InvalidArgumentError("weight_decay must be >= 0 and finite");
  }
  if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1)) return absl::InvalidArgumentError("Adam betas must be in [0, 1)");
  return absl::OkStatus();
}

double ScheduledLearningRate(const TrainOptions& o, int64_t step) {
  const int64_t warmup = o.warmup_steps >= 0 ? o.warmup_steps : o.steps / 20;
  if (step < warmup) return o.learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup + 1);
  const int64_t span = std::max<int64_t>(o.steps - warmup, 1);
  const double progress = std::min(1.0, static_cast<double>(step - warmup) / static_cast<double>(span));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return o.learning_rate * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

WindowSampler::WindowSampler(std::vector<int32_t> tokens, int64_t seq_len, uint64_t seed)
    : tokens_(std::move(tokens)), seq_len_(seq_len), seed_(seed) {}

std::pair<torch::Tensor, torch::Tensor> WindowSampler::Batch(int64_t batch_index, int64_t batch_size) const {
  torch::Tensor window = torch::full({batch_size, seq_len_ + 1}, ByteTokenizer::kPad, torch::kLong);
  int64_t* w = window.data_ptr<int64_t>();
  const int64_t n = num_tokens();
  PortablePrg prg(seed_, absl::StrCat("batch-", batch_index));
  for (int64_t b = 0; b < batch_size; ++b) {
    const int64_t span = n - (seq_len_ + 1);
    const int64_t start = span > 0 ? static_cast<int64_t>(prg.NextBelow(static_cast<uint64_t>(span + 1))) : 0;
    const int64_t len = std::min(seq_len_ + 1, n - start);
    for (int64_t i = 0; i < len; ++i) w[b * (seq_len_ + 1) + i] = tokens_[static_cast<size_t>(start + i)];
  }
  namespace idx = torch::indexing;
  return {window.index({idx::Slice(), idx::Slice(0, seq_len_)}).contiguous(),
          window.index({idx::Slice(), idx::Slice(1, idx::None)}).contiguous()};
}

Trainer::Trainer(Gpt2LmHead model, std::vector<ParamGroup> groups, std::vector<int32_t> tokens,
                 TrainOptions options)
    : model_(std::move(model)), sampler_(std::move(tokens), options.seq_len, options.seed), options_(options) {
  torch::optim::AdamWOptions adam(options.learning_rate);
  adam.betas({options.beta1, options.beta2}).eps(options.adam_eps).weight_decay(options.weight_decay);
  std::vector<torch::optim::OptimizerParamGroup> torch_groups;
  for (ParamGroup& g : groups) {
    params_.insert(params_.end(), g.params.begin(), g.params.end());
    lr_scales_.push_back(g.lr_scale);
    torch_groups.emplace_back(std::move(g.params), std::make_unique<torch::optim::AdamWOptions>(adam));
  }
  optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(torch_groups), adam);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(Gpt2LmHead model, std::vector<torch::Tensor> params,
                                                         std::vector<int32_t> train_tokens,
                                                         TrainOptions options) {
  std::vector<ParamGroup> groups;
  groups.push_back({std::move(params), 1.0});
  return Create(std::move(model), std::move(groups), std::move(train_tokens), options);
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(Gpt2LmHead model, std::vector<ParamGroup> groups,
                                                         std::vector<int32_t> train_tokens,
                                                         TrainOptions options) {
  FEDPERS_RETURN_IF_ERROR(options.Validate());
  if (options.seq_len == 0) options.seq_len = model->config().n_positions;
  if (options.seq_len > model->config().n_positions) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len ", options.seq_len, " exceeds n_positions ",
                                                   model->config().n_positions));
  }
  FEDPERS_RETURN_IF_ERROR(CheckTrainingFitsInMemory(model->config(), options.batch_size, options.micro_batch_size,
                                                    options.seq_len, options.recompute_activations,
                                                    AvailableMemoryBytes()));
  std::vector<ParamGroup> nonempty;
  for (ParamGroup& g : groups) {
    if (!(g.lr_scale > 0)) return absl::InvalidArgumentError("a parameter group's lr_scale must be positive");
    if (!g.params.empty()) nonempty.push_back(std::move(g));
  }
  if (nonempty.empty()) return absl::InvalidArgumentError("nothing to train: no parameters selected");
  if (train_tokens.size() < 2) return absl::InvalidArgumentError("nothing to train on: the training text is empty");
  for (ParamGroup& g : nonempty) {
    for (torch::Tensor& p : g.params) p.set_requires_grad(true);
  }
  return std::unique_ptr<Trainer>(new Trainer(std::move(model), std::move(nonempty), std::move(train_tokens), options));
}

absl::Status Trainer::Run(int64_t until, const std::function<bool(const StepStats&)>& on_step) {
  model_->train();
  // The model may be shared with other trainers (a worker's model): the
  // recompute switch holds for this call only.
  struct RecomputeScope {
    Gpt2Transformer t;
    bool before;
    ~RecomputeScope() { t->set_recompute_activations(before); }
  } scope{model_->transformer, model_->transformer->recompute_activations()};
  model_->transformer->set_recompute_activations(options_.recompute_activations);
  try {
    for (; next_step_ < until; ++next_step_) {
      const double lr = ScheduledLearningRate(options_, next_step_);
      for (size_t g = 0; g < optimizer_->param_groups().size(); ++g) {
        static_cast<torch::optim::AdamWOptions&>(optimizer_->param_groups()[g].options()).lr(lr * lr_scales_[g]);
      }
      auto [inputs, targets] = sampler_.Batch(next_step_, options_.batch_size);
      optimizer_->zero_grad();
      const int64_t micro = options_.micro_batch_size > 0 ? std::min(options_.micro_batch_size, options_.batch_size)
                                                         : options_.batch_size;
      const int64_t batch_tokens = targets.ne(ByteTokenizer::kPad).sum().item<int64_t>();
      double loss_value = 0;
      for (int64_t b0 = 0; b0 < options_.batch_size; b0 += micro) {
        const int64_t n = std::min(micro, options_.batch_size - b0);
        torch::Tensor part_targets = targets.narrow(0, b0, n);
        // A micro-batch's mean loss, weighted by its share of the batch's
        // tokens: the weighted sum over micro-batches is the batch mean.
        const int64_t part_tokens =
            micro == options_.batch_size ? batch_tokens : part_targets.ne(ByteTokenizer::kPad).sum().item<int64_t>();
        if (part_tokens == 0 && batch_tokens > 0) continue;
        torch::Tensor loss = model_->Loss(inputs.narrow(0, b0, n), part_targets);
        if (micro < options_.batch_size) {
          loss = loss * (static_cast<double>(part_tokens) / static_cast<double>(batch_tokens));
        }
        const double part_value = loss.item<double>();
        loss_value += part_value;
        if (!std::isfinite(part_value)) {
          return absl::InternalError(absl::StrCat("training diverged: loss is ", part_value, " at step ",
                                                  next_step_ + 1, "; lower the learning rate"));
        }
        loss.backward();
      }
      double norm;
      if (options_.grad_clip > 0) {
        norm = torch::nn::utils::clip_grad_norm_(params_, options_.grad_clip);
      } else {
        double sq = 0;
        for (const auto& p : params_) {
          if (p.grad().defined()) sq += p.grad().pow(2).sum().item<double>();
        }
        norm = std::sqrt(sq);
      }
      if (!std::isfinite(norm)) {
        return absl::InternalError(absl::StrCat("training diverged: gradient norm is ", norm, " at step ",
                                                next_step_ + 1));
      }
      optimizer_->step();
      StepStats stats;
      stats.step = next_step_ + 1;
      stats.loss = loss_value;
      stats.learning_rate = lr;
      stats.grad_norm = norm;
      stats.tokens = batch_tokens;
      if (on_step && !on_step(stats)) {
        ++next_step_;
        break;
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("libtorch error during training: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::SaveState(const std::string& path) const {
  try {
    torch::serialize::OutputArchive archive;
    optimizer_->save(archive);
    std::ostringstream out;
    archive.save_to(out);
    return WriteFileAtomically(path, out.str());
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot save optimizer state: ", e.what_without_backtrace()));
  }
}

absl::Status Trainer::LoadState(const std::string& path, int64_t next_step) {
  FEDPERS_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  try {
    torch::serialize::InputArchive archive;
    std::istringstream in(bytes);
    archive.load_from(in);
    optimizer_->load(archive);
  } catch (const c10::Error& e) {
    return absl::DataLossError(absl::StrCat("optimizer state '", path, "' is unreadable: ",
                                            e.what_without_backtrace()));
  }
  next_step_ = next_step;
  return absl::OkStatus();
}

absl::StatusOr<EvalResult> Evaluate(Gpt2LmHead& model, const std::vector<int32_t>& tokens, int64_t seq_len,
                                    int64_t batch_size, int64_t max_tokens) {
  if (seq_len <= 0) seq_len = model->config().n_positions;
  if (tokens.size() < 2) return absl::InvalidArgumentError("nothing to evaluate: the held-out text is empty");
  int64_t n = static_cast<int64_t>(tokens.size());
  if (max_tokens > 0) n = std::min(n, max_tokens + 1);
  const int64_t windows = (n - 1 + seq_len - 1) / seq_len;
  torch::NoGradGuard no_grad;
  model->eval();
  double loss_sum = 0;
  int64_t correct = 0, count = 0;
  try {
    for (int64_t w0 = 0; w0 < windows; w0 += batch_size) {
      const int64_t bs = std::min(batch_size, windows - w0);
      torch::Tensor in = torch::full({bs, seq_len}, ByteTokenizer::kPad, torch::kLong);
      torch::Tensor tg = torch::full({bs, seq_len}, ByteTokenizer::kPad, torch::kLong);
      int64_t* pi = in.data_ptr<int64_t>();
      int64_t* pt = tg.data_ptr<int64_t>();
      for (int64_t b = 0; b < bs; ++b) {
        const int64_t start = (w0 + b) * seq_len;
        for (int64_t i = 0; i < seq_len && start + i + 1 < n; ++i) {
          pi[b * seq_len + i] = tokens[static_cast<size_t>(start + i)];
          pt[b * seq_len + i] = tokens[static_cast<size_t>(start + i + 1)];
        }
      }
      torch::Tensor logits = model->forward(in).view({-1, model->config().vocab_size});
      torch::Tensor flat_t = tg.view({-1});
      torch::Tensor mask = flat_t.ne(ByteTokenizer::kPad);
      torch::Tensor losses = torch::nn::functional::cross_entropy(
          logits, flat_t,
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(ByteTokenizer::kPad).reduction(torch::kSum));
      loss_sum += losses.item<double>();
      correct += (logits.argmax(-1).eq(flat_t) & mask).sum().item<int64_t>();
      count += mask.sum().item<int64_t>();
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("libtorch error during evaluation: ", e.what_without_backtrace()));
  }
  EvalResult r;
  r.tokens = count;
  r.loss = count > 0 ? loss_sum / static_cast<double>(count) : 0;
  r.perplexity = std::exp(r.loss);
  r.accuracy = count > 0 ? static_cast<double>(correct) / static_cast<double>(count) : 0;
  return r;
}

}  // namespace fedpers
