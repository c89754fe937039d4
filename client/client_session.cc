#include "client/client_session.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/portable_prg.h"
#include "common/safetensors.h"
#include "secure_agg/dp_mechanisms.h"

namespace fedpers {

absl::StatusOr<ClientSession> ClientSession::Create(Gpt2LmHead model, std::string user_id,
                                                    std::vector<int32_t> train_tokens, LocalTrainingOptions options) {
  if (user_id.empty()) return absl::InvalidArgumentError("empty user id");
  if (train_tokens.size() < 2) return absl::InvalidArgumentError(absl::StrCat("user '", user_id, "' has no training text"));
  if (!model->lora_config().global_enabled) return absl::InvalidArgumentError("federated rounds need the global LoRA branch");
  ClientSession s;
  s.model_ = model;
  s.user_id_ = std::move(user_id);
  s.train_tokens_ = std::move(train_tokens);
  s.options_ = options;
  if (model->lora_config().residual_enabled) {
    model->ResetResidual(Fnv1a64(s.user_id_) ^ options.seed);
    s.residual_ = model->FlattenBranch(LoraBranch::kResidual);
  }
  absl::StatusOr<dp::RandomSource> rng = dp::RandomSource::FromCsprng();
  if (!rng.ok()) return rng.status();
  s.rng_ = std::move(*rng);
  return s;
}

absl::Status ClientSession::ActivateResidual() {
  if (residual_.empty()) return absl::OkStatus();
  return model_->LoadBranch(LoraBranch::kResidual, residual_);
}

absl::Status ClientSession::RestoreResidual(std::vector<float> residual) {
  if (residual.size() != residual_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("residual of ", residual.size(), " values; user '", user_id_,
                                                   "' has a residual of ", residual_.size()));
  }
  for (float v : residual) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError("residual holds NaN or Inf");
  }
  residual_ = std::move(residual);
  return absl::OkStatus();
}

absl::Status ClientSession::Train(int64_t steps, double lr, bool global, bool residual, uint64_t seed) {
  if (steps <= 0) return absl::OkStatus();
  std::vector<torch::Tensor> params;
  if (global) {
    for (auto& t : model_->BranchParameters(LoraBranch::kGlobal)) params.push_back(t);
  }
  if (residual) {
    for (auto& t : model_->BranchParameters(LoraBranch::kResidual)) params.push_back(t);
  }
  if (params.empty()) return absl::OkStatus();
  TrainOptions o;
  o.steps = steps;
  o.batch_size = options_.batch_size;
  o.seq_len = options_.seq_len;
  o.learning_rate = lr;
  o.seed = seed;
  absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(model_, params, train_tokens_, o);
  if (!trainer.ok()) return trainer.status();
  absl::Status s = (*trainer)->Run(steps);
  for (auto& p : params) p.set_requires_grad(false);
  return s;
}

absl::StatusOr<fedpers::v1::SecAggClientMessage> ClientSession::BeginRound(const fedpers::v1::RoundInvitation& inv) {
  const FlatLayout& layout = model_->BranchLayout(LoraBranch::kGlobal);
  if (inv.layout_fingerprint() != layout.Fingerprint()) {
    return absl::FailedPreconditionError("the coordinator's global adapter layout differs from this client's model");
  }
  absl::StatusOr<secagg::RingConfig> ring = dp::RingFromProto(inv.ring());
  if (!ring.ok()) return ring.status();
  absl::StatusOr<dp::DistributedDpConfig> dpc = dp::DpFromProto(inv.dp());
  if (!dpc.ok()) return dpc.status();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(inv.global_adapter());
  if (!file.ok()) return absl::InvalidArgumentError(absl::StrCat("global adapter: ", file.status().message()));
  absl::StatusOr<std::vector<float>> global = layout.FromSafetensors(*file);
  if (!global.ok()) return global.status();
  if (absl::Status s = model_->LoadBranch(LoraBranch::kGlobal, *global); !s.ok()) return s;
  if (absl::Status s = ActivateResidual(); !s.ok()) return s;
  // Local training with this round's seed (reproducible per user and round).
  const uint64_t seed = options_.seed ^ Fnv1a64(absl::StrCat(user_id_, "/", inv.round()));
  const bool has_residual = !residual_.empty();
  absl::Status trained;
  if (options_.schedule == TrainingSchedule::kJoint) {
    trained = Train(std::max(options_.global_steps, options_.residual_steps), options_.global_learning_rate, true,
                    has_residual, seed);
  } else {
    trained = Train(options_.global_steps, options_.global_learning_rate, true, false, seed);
    if (trained.ok() && has_residual) {
      trained = Train(options_.residual_steps, options_.residual_learning_rate, false, true, seed + 1);
    }
  }
  if (!trained.ok()) return trained;
  std::vector<float> after = model_->FlattenBranch(LoraBranch::kGlobal);
  last_delta_.resize(after.size());
  for (size_t i = 0; i < after.size(); ++i) last_delta_[i] = after[i] - (*global)[i];
  if (has_residual) residual_ = model_->FlattenBranch(LoraBranch::kResidual);
  absl::StatusOr<std::vector<uint32_t>> encoded = dp::PrivatizeForSecAgg(last_delta_, *ring, *dpc, *rng_);
  if (!encoded.ok()) return encoded.status();
  absl::StatusOr<secagg::SecAggClient> client =
      secagg::SecAggClient::Create(inv.secagg(), inv.secagg_id(), std::move(*encoded));
  if (!client.ok()) return client.status();
  secagg_ = std::move(*client);
  return secagg_->Start();
}

absl::StatusOr<fedpers::v1::SecAggClientMessage> ClientSession::Handle(const fedpers::v1::SecAggServerMessage& message) {
  if (!secagg_) return absl::FailedPreconditionError("no round in progress");
  return secagg_->Handle(message);
}

}  // namespace fedpers
