#include "client/client_session.h"

#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/portable_prg.h"
#include "common/safetensors.h"
#include "secure_agg/dp_mechanisms.h"
#include "secure_agg/ring_encoding.h"

namespace fedpers {

TrainOptions LocalTrainOptions(const LocalTrainingOptions& o) {
  TrainOptions t;
  t.batch_size = o.batch_size;
  t.micro_batch_size = o.micro_batch_size;
  t.recompute_activations = o.recompute_activations;
  t.seq_len = o.seq_len;
  return t;
}

absl::StatusOr<double> TrainBranches(Gpt2LmHead model, const std::vector<int32_t>& tokens, int64_t global_steps,
                                     int64_t residual_steps, const LocalTrainingOptions& o, uint64_t seed) {
  const auto start = std::chrono::steady_clock::now();
  const bool has_residual = !model->BranchParameters(LoraBranch::kResidual).empty();
  if (!has_residual) residual_steps = 0;
  if (global_steps < 0 || residual_steps < 0) return absl::InvalidArgumentError("negative step count");
  auto make = [&](bool global, bool residual, int64_t steps, double lr,
                  uint64_t s) -> absl::StatusOr<std::unique_ptr<Trainer>> {
    std::vector<torch::Tensor> params;
    if (global) {
      for (auto& t : model->BranchParameters(LoraBranch::kGlobal)) params.push_back(t);
    }
    if (residual) {
      for (auto& t : model->BranchParameters(LoraBranch::kResidual)) params.push_back(t);
    }
    TrainOptions t = LocalTrainOptions(o);
    t.steps = steps;
    t.learning_rate = lr;
    t.seed = s;
    return Trainer::Create(model, std::move(params), tokens, t);
  };
  absl::Status status;
  if (o.schedule == TrainingSchedule::kJoint && global_steps > 0 && residual_steps > 0) {
    // One optimizer over both branches, each at its own learning rate.
    TrainOptions t = LocalTrainOptions(o);
    t.steps = global_steps + residual_steps;
    t.learning_rate = o.global_learning_rate;
    t.seed = seed;
    std::vector<ParamGroup> groups(2);
    groups[0].params = model->BranchParameters(LoraBranch::kGlobal);
    groups[1].params = model->BranchParameters(LoraBranch::kResidual);
    groups[1].lr_scale = o.residual_learning_rate / o.global_learning_rate;
    absl::StatusOr<std::unique_ptr<Trainer>> trainer = Trainer::Create(model, std::move(groups), tokens, t);
    status = trainer.ok() ? (*trainer)->Run(t.steps) : trainer.status();
  } else {
    std::unique_ptr<Trainer> g, u;
    if (global_steps > 0) {
      absl::StatusOr<std::unique_ptr<Trainer>> t = make(true, false, global_steps, o.global_learning_rate, seed);
      if (!t.ok()) return t.status();
      g = std::move(*t);
    }
    if (residual_steps > 0) {
      absl::StatusOr<std::unique_ptr<Trainer>> t =
          make(false, true, residual_steps, o.residual_learning_rate, seed + 1);
      if (!t.ok()) return t.status();
      u = std::move(*t);
    }
    if (o.schedule == TrainingSchedule::kAlternating && g && u) {
      // Interleave in proportion: after k of the n = g + u steps, about
      // k g / n have gone to the global branch.
      const int64_t n = global_steps + residual_steps;
      int64_t done_g = 0, done_u = 0;
      for (int64_t k = 0; k < n && status.ok(); ++k) {
        if (done_g * n < (k + 1) * global_steps && done_g < global_steps) {
          status = g->Run(++done_g);
        } else {
          status = u->Run(++done_u);
        }
      }
    } else {
      if (g) status = g->Run(global_steps);
      if (status.ok() && u) status = u->Run(residual_steps);
    }
  }
  for (LoraBranch b : {LoraBranch::kGlobal, LoraBranch::kResidual}) {
    for (auto& p : model->BranchParameters(b)) p.set_requires_grad(false);
  }
  if (!status.ok()) return status;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

absl::StatusOr<ClientSession> ClientSession::Create(Gpt2LmHead model, std::string user_id, TokenSource train_tokens,
                                                    LocalTrainingOptions options) {
  if (user_id.empty()) return absl::InvalidArgumentError("empty user id");
  if (!train_tokens) return absl::InvalidArgumentError(absl::StrCat("user '", user_id, "' has no training text"));
  if (!model->lora_config().global_enabled) return absl::InvalidArgumentError("federated rounds need the global LoRA branch");
  if (absl::Status v = options.Validate(); !v.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("local training options: ", v.message()));
  }
  ClientSession s;
  s.user_id_ = std::move(user_id);
  s.train_tokens_ = std::move(train_tokens);
  s.options_ = options;
  s.global_fingerprint_ = model->BranchLayout(LoraBranch::kGlobal).Fingerprint();
  if (model->lora_config().residual_enabled) {
    s.residual_fingerprint_ = model->BranchLayout(LoraBranch::kResidual).Fingerprint();
    model->ResetResidual(Fnv1a64(s.user_id_) ^ options.seed);
    s.residual_ = model->FlattenBranch(LoraBranch::kResidual);
  }
  if (options.noise_seed == 0) {
    absl::StatusOr<dp::RandomSource> rng = dp::RandomSource::FromCsprng();
    if (!rng.ok()) return rng.status();
    s.csprng_ = std::move(*rng);
  }
  return s;
}

absl::Status ClientSession::ActivateResidual(Gpt2LmHead model) const {
  if (residual_.empty()) return absl::OkStatus();
  return model->LoadBranch(LoraBranch::kResidual, residual_);
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

absl::StatusOr<fedpers::v1::SecAggClientMessage> ClientSession::BeginRound(const fedpers::v1::RoundInvitation& inv,
                                                                           Gpt2LmHead model,
                                                                           std::vector<float>* plain_delta) {
  EndRound();
  if (model->BranchLayout(LoraBranch::kGlobal).Fingerprint() != global_fingerprint_ ||
      (!residual_.empty() && model->BranchLayout(LoraBranch::kResidual).Fingerprint() != residual_fingerprint_)) {
    return absl::FailedPreconditionError("the model's adapter layout differs from this session's");
  }
  if (inv.layout_fingerprint() != global_fingerprint_) {
    return absl::FailedPreconditionError("the coordinator's global adapter layout differs from this client's model");
  }
  absl::StatusOr<secagg::RingConfig> ring = dp::RingFromProto(inv.ring());
  if (!ring.ok()) return ring.status();
  absl::StatusOr<dp::DistributedDpConfig> dpc = dp::DpFromProto(inv.dp());
  if (!dpc.ok()) return dpc.status();
  // The noise is split among dp.min_clients contributors; more than the
  // round's clients would leave the sum (and, in a plain round, each update
  // the coordinator sees) with less noise than z S.
  if (dpc->min_clients < 1 || dpc->min_clients > static_cast<int64_t>(inv.secagg().num_clients())) {
    return absl::InvalidArgumentError(absl::StrCat("the invitation splits the noise among ", dpc->min_clients,
                                                   " clients, but the round has ", inv.secagg().num_clients()));
  }
  // The update is encoded in `ring` and summed in the SecAgg ring: both must
  // be the same, and the vector the client's own layout pads to. Checked
  // before training, so a bad invitation costs no compute.
  const uint64_t expected_length =
      dp::RotatedLength(static_cast<size_t>(model->BranchLayout(LoraBranch::kGlobal).total_size()), *dpc);
  if (inv.secagg().vector_length() != expected_length) {
    return absl::InvalidArgumentError(absl::StrCat("the invitation's vector length ", inv.secagg().vector_length(),
                                                   " differs from this client's ", expected_length));
  }
  if (inv.secagg().ring_bits() != static_cast<uint32_t>(ring->bits)) {
    return absl::InvalidArgumentError(absl::StrCat("the invitation sums in a ", inv.secagg().ring_bits(),
                                                   "-bit ring but encodes in a ", ring->bits, "-bit one"));
  }
  const bool plain = inv.aggregation() == fedpers::v1::AGGREGATION_PLAIN;
  if (plain) {
    if (!options_.allow_plain_aggregation) {
      return absl::FailedPreconditionError(
          "the coordinator asks for a round without secure aggregation (it would see this client's update); "
          "this client does not allow it");
    }
    if (inv.secagg_id() < 1 || inv.secagg_id() > inv.secagg().num_clients()) {
      return absl::InvalidArgumentError("plain round: the invitation's client id is out of range");
    }
  } else if (inv.aggregation() != fedpers::v1::AGGREGATION_SECAGG_PLUS) {
    return absl::InvalidArgumentError(absl::StrCat("unknown aggregation ", static_cast<int>(inv.aggregation())));
  }
  if (inv.global_adapter().empty()) return absl::InvalidArgumentError("the invitation carries no global adapter");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(inv.global_adapter());
  if (!file.ok()) return absl::InvalidArgumentError(absl::StrCat("global adapter: ", file.status().message()));
  absl::StatusOr<std::vector<float>> global = model->BranchLayout(LoraBranch::kGlobal).FromSafetensors(*file);
  if (!global.ok()) return global.status();
  if (absl::Status s = model->LoadBranch(LoraBranch::kGlobal, *global); !s.ok()) return s;
  if (absl::Status s = ActivateResidual(model); !s.ok()) return s;
  // Local training with this round's seed (reproducible per user and round).
  const uint64_t seed = options_.seed ^ Fnv1a64(absl::StrCat(user_id_, "/", inv.round()));
  absl::StatusOr<double> seconds =
      TrainBranches(model, train_tokens_(), options_.global_steps, options_.residual_steps, options_, seed);
  if (!seconds.ok()) return seconds.status();
  last_training_seconds_ = *seconds;
  // The delta replaces the trained values in place: a round's client holds
  // one global-sized float vector at a time.
  std::vector<float> delta = model->FlattenBranch(LoraBranch::kGlobal);
  for (size_t i = 0; i < delta.size(); ++i) delta[i] -= (*global)[i];
  std::vector<float>().swap(*global);
  if (!residual_.empty()) residual_ = model->FlattenBranch(LoraBranch::kResidual);
  std::optional<dp::RandomSource> seeded;
  if (options_.noise_seed != 0) {
    seeded = dp::RandomSource::FromTestSeed(Fnv1a64(absl::StrCat(options_.noise_seed, "/", user_id_, "/", inv.round())));
  }
  absl::StatusOr<std::vector<uint32_t>> encoded =
      dp::PrivatizeForSecAgg(delta, *ring, *dpc, seeded ? *seeded : *csprng_);
  if (!encoded.ok()) return encoded.status();
  if (plain_delta != nullptr) {
    *plain_delta = std::move(delta);
  } else {
    std::vector<float>().swap(delta);
  }
  if (plain) {
    fedpers::v1::SecAggClientMessage message;
    message.mutable_plain_input()->set_client_id(inv.secagg_id());
    const std::vector<uint8_t> packed = secagg::PackBits(*encoded, ring->bits);
    message.mutable_plain_input()->set_packed(std::string(packed.begin(), packed.end()));
    return message;
  }
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

void ClientSession::EndRound() {
  secagg_.reset();
}

}  // namespace fedpers
