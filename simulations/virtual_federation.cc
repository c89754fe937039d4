#include "simulations/virtual_federation.h"

#include <malloc.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/tokenizer.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// The ledger's figures after a round, as an operator's status shows them.
void RecordEpsilon(const StatusResponse& status, RoundRecord& record) {
  record.epsilon = status.epsilon();
  record.epsilon_against_coordinator = status.has_epsilon_against_coordinator()
                                           ? std::optional<double>(status.epsilon_against_coordinator())
                                           : std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelPool>> ModelPool::Create(Gpt2LmHead base, const LoraConfig& lora, int workers,
                                                             int cores) {
  if (workers < 1) return absl::InvalidArgumentError("a model pool needs at least one worker");
  std::unique_ptr<ModelPool> pool(new ModelPool());
  pool->threads_per_worker_ = std::max(1, cores / workers);
  std::vector<std::pair<std::string, torch::Tensor>> shared = base->BaseParameters();
  for (int w = 0; w < workers; ++w) {
    absl::StatusOr<Gpt2LmHead> m = CreateGpt2(base->config(), lora);
    if (!m.ok()) return m.status();
    // Point every base parameter at the shared tensor: one copy of the
    // frozen weights however many workers there are.
    std::vector<std::pair<std::string, torch::Tensor>> own = (*m)->BaseParameters();
    if (own.size() != shared.size()) return absl::InternalError("base parameter lists differ");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < own.size(); ++i) {
      if (own[i].first != shared[i].first) return absl::InternalError("base parameter order differs");
      own[i].second.set_data(shared[i].second);
    }
    (*m)->SetBaseTrainable(false);
    pool->models_.push_back(*m);
  }
  // Each worker model was built with base weights of its own, freed above;
  // glibc would keep their pages resident (a base model's worth per worker).
  malloc_trim(0);
  return pool;
}

absl::Status ModelPool::ParallelFor(int64_t n,
                                    const std::function<absl::Status(int64_t item, int worker, Gpt2LmHead model)>& fn) {
  if (models_.size() == 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) {
      absl::Status s = fn(i, 0, models_[0]);
      malloc_trim(0);  // as in the workers below
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  absl::Status first_error;
  std::vector<std::thread> threads;
  for (int w = 0; w < size(); ++w) {
    threads.emplace_back([&, w] {
      // Intra-op (OpenMP, BLAS) threads are set per thread: a new thread
      // would otherwise use every core and oversubscribe the machine.
      torch::set_num_threads(threads_per_worker_);
      while (!failed.load()) {
        const int64_t i = next.fetch_add(1);
        if (i >= n) break;
        absl::Status s = fn(i, w, models_[static_cast<size_t>(w)]);
        // An item (a client's training, a user's evaluation) frees its
        // activations between the long-lived buffers it leaves behind
        // (residual, SecAgg+ state); glibc keeps such holes resident in the
        // worker's arena, which added 10-18 MiB to the peak (bench
        // simulate). Returning free pages after each item costs milliseconds
        // against seconds of training.
        malloc_trim(0);
        if (!s.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.ok()) first_error = s;
          failed.store(true);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return first_error;
}

absl::StatusOr<std::unique_ptr<VirtualFederation>> VirtualFederation::Create(ModelPool* pool,
                                                                             const std::string& state_dir,
                                                                             std::vector<VirtualUser> users,
                                                                             FederationSettings settings) {
  if (users.empty()) return absl::InvalidArgumentError("a federation needs users");
  std::unique_ptr<VirtualFederation> f(new VirtualFederation());
  f->pool_ = pool;
  f->settings_ = settings;
  f->dropout_rng_.seed(settings.seed);
  std::error_code ec;
  std::filesystem::remove_all(state_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot clear '", state_dir, "': ", ec.message()));
  absl::StatusOr<std::unique_ptr<StateStore>> store = StateStore::Open(state_dir);
  if (!store.ok()) return store.status();
  f->store_ = std::move(*store);
  Gpt2LmHead model = pool->model(0);
  absl::StatusOr<std::unique_ptr<CoordinatorRuntime>> rt = CoordinatorRuntime::Create(
      f->store_.get(), model->BranchLayout(LoraBranch::kGlobal), settings.runtime, [p = f.get()] { return p->clock_ms_; });
  if (!rt.ok()) return rt.status();
  f->runtime_ = std::move(*rt);
  f->users_ = std::move(users);
  f->participations_.assign(f->users_.size(), 0);
  for (size_t i = 0; i < f->users_.size(); ++i) {
    const VirtualUser& u = f->users_[i];
    if (!f->index_.emplace(u.id, i).second) return absl::InvalidArgumentError(absl::StrCat("user '", u.id, "' twice"));
    absl::StatusOr<ClientSession> s = ClientSession::Create(
        model, u.id, [text = u.train_text] { return ByteTokenizer::Encode(text); }, settings.local);
    if (!s.ok()) return s.status();
    f->sessions_.push_back(std::move(*s));
    // Each virtual user is its own client identity.
    JoinRequest join;
    join.add_user_ids(u.id);
    join.set_layout_fingerprint(model->BranchLayout(LoraBranch::kGlobal).Fingerprint());
    join.set_allows_plain_aggregation(settings.local.allow_plain_aggregation);
    if (absl::StatusOr<JoinResponse> r = f->runtime_->Join(u.id, join); !r.ok()) return r.status();
  }
  return f;
}

absl::StatusOr<RoundRecord> VirtualFederation::RunRound() {
  RoundRecord record;
  double coordinator_seconds = 0;
  auto coordinator = [&](auto&& call) {
    const Clock::time_point t = Clock::now();
    auto result = call();
    coordinator_seconds += Since(t);
    return result;
  };
  // Every user checks in (as polling clients do between rounds), which also
  // delivers the end of the previous round; time moves on, so users that
  // dropped out last round count as seen again.
  clock_ms_ += 1;
  for (size_t i = 0; i < users_.size(); ++i) {
    absl::StatusOr<PollResponse> p = coordinator([&] { return runtime_->Poll(users_[i].id, users_[i].id); });
    if (!p.ok()) return p.status();
    if (p->has_finished()) sessions_[i].EndRound();
  }
  const Clock::time_point start = Clock::now();
  absl::StatusOr<CoordinatorRuntime::TickResult> opened = coordinator([&] { return runtime_->Tick(); });
  if (!opened.ok()) return opened.status();
  record.round = runtime_->AdminStatus().current_round();
  if (!opened->opened) {
    record.round += 1;  // the round that could not open
    record.committed = false;
    const StatusResponse status = runtime_->AdminStatus();
    if (opened->refused) {
      record.abort_reason = *opened->refused;
    } else if (!status.open_refused().empty()) {
      record.abort_reason = status.open_refused();
    } else {
      record.abort_reason = absl::StrCat(
          status.eligible_users(), " users may be sampled, fewer than min_clients ",
          settings_.runtime.round.min_clients,
          settings_.runtime.round.secure_aggregation ? "" : " (without SecAgg+, only users who allow it)");
    }
    RecordEpsilon(runtime_->AdminStatus(), record);
    return record;
  }
  record.round = runtime_->AdminStatus().current_round();
  // The sampled users, their invitations, and when (if ever) each drops out.
  struct Participant {
    size_t user;
    RoundInvitation invitation;
    int drop_stage = 4;  // 0 keys, 1 shares, 2 inputs, 3 unmasking, 4 never
    bool gone = false;
    double seconds = 0;
    int64_t bytes_up = 0, bytes_down = 0;
    SecAggClientMessage reply;
  };
  std::vector<Participant> participants;
  std::string round_adapter;
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (size_t i = 0; i < users_.size(); ++i) {
    absl::StatusOr<PollResponse> p = coordinator([&] { return runtime_->Poll(users_[i].id, users_[i].id); });
    if (!p.ok()) return p.status();
    if (!p->has_invitation()) continue;
    Participant part;
    part.user = i;
    part.bytes_down += static_cast<int64_t>(p->ByteSizeLong());
    part.invitation = std::move(*p->mutable_invitation());
    record.ring_bits = part.invitation.secagg().ring_bits();
    // Every invitation of a round carries the same global adapter: keep one
    // copy for the round, not one per sampled client until it trains.
    if (round_adapter.empty()) round_adapter = std::move(*part.invitation.mutable_global_adapter());
    part.invitation.clear_global_adapter();
    if (settings_.dropout > 0) {
      for (int stage = 0; stage < 4; ++stage) {
        if (uniform(dropout_rng_) < settings_.dropout) {
          part.drop_stage = stage;
          break;
        }
      }
    }
    participants.push_back(std::move(part));
  }
  record.sampled = static_cast<int64_t>(participants.size());
  // Keys stage: local training and the update pipeline, in parallel.
  std::vector<double> training_by_worker(static_cast<size_t>(pool_->size()), 0.0);
  absl::Status trained = pool_->ParallelFor(
      static_cast<int64_t>(participants.size()), [&](int64_t k, int worker, Gpt2LmHead model) -> absl::Status {
        Participant& part = participants[static_cast<size_t>(k)];
        if (part.drop_stage == 0) return absl::OkStatus();
        const Clock::time_point t = Clock::now();
        ClientSession& session = sessions_[part.user];
        // The client's copy of the round's global adapter lives while it
        // trains (one per worker).
        RoundInvitation invitation = std::move(part.invitation);
        invitation.set_global_adapter(round_adapter);
        absl::StatusOr<SecAggClientMessage> reply = session.BeginRound(invitation, model);
        part.seconds += Since(t);
        if (!reply.ok()) {
          return absl::Status(reply.status().code(),
                              absl::StrCat("user '", users_[part.user].id, "': ", reply.status().message()));
        }
        training_by_worker[static_cast<size_t>(worker)] += session.last_training_seconds();
        part.reply = std::move(*reply);
        return absl::OkStatus();
      });
  if (!trained.ok()) return trained;
  record.training_seconds = *std::max_element(training_by_worker.begin(), training_by_worker.end());
  auto upload = [&](Participant& part) -> absl::Status {
    SecAggUpload up;
    up.set_user_id(users_[part.user].id);
    up.set_round(record.round);
    *up.mutable_message() = std::move(part.reply);
    part.bytes_up += static_cast<int64_t>(up.ByteSizeLong());
    return coordinator([&] { return runtime_->Upload(users_[part.user].id, up); });
  };
  for (Participant& part : participants) {
    ++participations_[part.user];
    if (part.drop_stage == 0) {
      part.gone = true;
      continue;
    }
    if (absl::Status s = upload(part); !s.ok()) return s;
  }
  // Later stages: the coordinator closes a stage when everyone answered or,
  // on the simulated clock, when its deadline passed.
  for (int stage = 1;; ++stage) {
    const std::string stage_before = runtime_->AdminStatus().stage();
    absl::StatusOr<CoordinatorRuntime::TickResult> tick = coordinator([&] { return runtime_->Tick(); });
    if (!tick.ok()) return tick.status();
    if (!tick->committed && !tick->aborted && runtime_->AdminStatus().stage() == stage_before) {
      // Not everyone answered: let the deadline pass.
      clock_ms_ += settings_.runtime.stage_timeout_ms;
      tick = coordinator([&] { return runtime_->Tick(); });
      if (!tick.ok()) return tick.status();
    }
    if (tick->committed || tick->aborted) {
      record.committed = tick->committed.has_value();
      if (tick->aborted) record.abort_reason = *tick->aborted;
      if (tick->committed) record.contributors = tick->committed->survivors;
      break;
    }
    for (Participant& part : participants) {
      if (part.gone) continue;
      absl::StatusOr<PollResponse> p =
          coordinator([&] { return runtime_->Poll(users_[part.user].id, users_[part.user].id); });
      if (!p.ok()) return p.status();
      if (!p->has_secagg()) continue;
      part.bytes_down += static_cast<int64_t>(p->ByteSizeLong());
      if (part.drop_stage == stage) {
        part.gone = true;
        continue;
      }
      const Clock::time_point t = Clock::now();
      absl::StatusOr<SecAggClientMessage> reply = sessions_[part.user].Handle(p->secagg());
      part.seconds += Since(t);
      if (!reply.ok()) {
        part.gone = true;  // the client's protocol run ended; the coordinator sees a dropout
        continue;
      }
      part.reply = std::move(*reply);
      if (absl::Status s = upload(part); !s.ok()) return s;
    }
    if (stage > 8) return absl::InternalError("round did not end after every stage");
  }
  record.wall_seconds = Since(start);
  for (const Participant& part : participants) {
    record.bytes_up_per_client += static_cast<double>(part.bytes_up);
    record.bytes_down_per_client += static_cast<double>(part.bytes_down);
    record.client_seconds += part.seconds;
  }
  if (!participants.empty()) {
    const double n = static_cast<double>(participants.size());
    record.bytes_up_per_client /= n;
    record.bytes_down_per_client /= n;
    record.client_seconds /= n;
  }
  record.coordinator_seconds = coordinator_seconds;
  RecordEpsilon(runtime_->AdminStatus(), record);
  return record;
}

}  // namespace fedpers
