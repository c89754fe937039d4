#include "coordinator/runtime.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/portable_prg.h"
#include "common/utf8.h"
#include "secure_agg/crypto.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;

int64_t SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char* StageName(RoundStage s) {
  switch (s) {
    case RoundStage::kIdle: return "idle";
    case RoundStage::kKeys: return "keys";
    case RoundStage::kShares: return "shares";
    case RoundStage::kInputs: return "inputs";
    case RoundStage::kUnmasking: return "unmasking";
  }
  return "?";
}

}  // namespace

absl::Status RuntimeSettings::Validate() const {
  if (stage_timeout_ms <= 0) return absl::InvalidArgumentError(absl::StrCat("stage_timeout_ms must be positive, got ", stage_timeout_ms));
  if (liveness_timeout_ms <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("liveness_timeout_ms must be positive, got ", liveness_timeout_ms));
  }
  if (round_interval_ms < 0) {
    return absl::InvalidArgumentError(absl::StrCat("round_interval_ms must be >= 0, got ", round_interval_ms));
  }
  if (max_rounds < 0) return absl::InvalidArgumentError(absl::StrCat("max_rounds must be >= 0 (0: no limit), got ", max_rounds));
  if (admin_page_bytes < 1 || admin_page_bytes > kMaxAdminPageBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("admin_page_bytes must be 1 to ", kMaxAdminPageBytes, ", got ", admin_page_bytes));
  }
  return round.Validate();
}

absl::StatusOr<std::unique_ptr<CoordinatorRuntime>> CoordinatorRuntime::Create(StateStore* store, FlatLayout layout,
                                                                                RuntimeSettings settings,
                                                                                std::function<int64_t()> now_ms) {
  if (absl::Status s = settings.Validate(); !s.ok()) return s;
  std::unique_ptr<CoordinatorRuntime> rt(new CoordinatorRuntime());
  rt->store_ = store;
  rt->settings_ = settings;
  rt->now_ms_ = now_ms ? std::move(now_ms) : SteadyMs;
  rt->layout_fingerprint_ = layout.Fingerprint();
  absl::StatusOr<std::unique_ptr<RoundMachine>> machine = RoundMachine::Create(store, std::move(layout), settings.round);
  if (!machine.ok()) return machine.status();
  rt->machine_ = std::move(*machine);
  rt->last_round_end_ms_ = rt->now_ms_() - settings.round_interval_ms;
  rt->paused_ = settings.start_paused;
  absl::StatusOr<std::vector<UserRow>> users = store->Users();
  if (!users.ok()) return users.status();
  for (const UserRow& u : *users) rt->owner_[u.user_id] = u.client_id;
  return rt;
}

absl::Status CoordinatorRuntime::OwnsUser(const std::string& client, const std::string& user) const {
  auto it = owner_.find(user);
  if (it == owner_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("user '", user, "' is not bound to any client (it never joined)"));
  }
  if (it->second != client) {
    return absl::PermissionDeniedError(absl::StrCat("user '", user, "' belongs to another client"));
  }
  return absl::OkStatus();
}

absl::Status CoordinatorRuntime::InSession(const std::string& client, const std::string& user) const {
  auto it = owner_.find(user);
  if (it != owner_.end() && it->second != client) {
    return absl::PermissionDeniedError(absl::StrCat("user '", user, "' belongs to another client"));
  }
  // FailedPrecondition tells a client to join again (after a restart, the
  // layout and the user's preferences are checked anew).
  if (it == owner_.end() || !joined_.count(user)) {
    return absl::FailedPreconditionError(absl::StrCat("user '", user, "' has not joined since the coordinator started"));
  }
  return absl::OkStatus();
}

absl::StatusOr<JoinResponse> CoordinatorRuntime::Join(const std::string& client, const JoinRequest& request,
                                                      const std::string& cert_fingerprint) {
  std::lock_guard<std::mutex> lock(mu_);
  if (client.empty()) return absl::UnauthenticatedError("no client identity");
  if (request.layout_fingerprint() != layout_fingerprint_) {
    return absl::FailedPreconditionError("the client's adapter layout differs from the coordinator's (model or LoRA config)");
  }
  if (request.user_ids().empty()) return absl::InvalidArgumentError("join names no user");
  for (int i = 0; i < request.user_ids_size(); ++i) {
    const std::string& user = request.user_ids(i);
    // Ids reach operators' terminals and file names: refused here, before
    // anything stores or echoes them.
    if (absl::Status s = CheckUserId(user, absl::StrCat("join: user id ", i + 1)); !s.ok()) return s;
    auto it = owner_.find(user);
    if (it != owner_.end() && it->second != client) {
      return absl::PermissionDeniedError(absl::StrCat("user '", user, "' belongs to another client"));
    }
  }
  // Durable before it takes effect: a binding this process acted on survives it.
  const std::vector<std::string> users(request.user_ids().begin(), request.user_ids().end());
  if (absl::Status s = store_->RecordJoin(client, cert_fingerprint, users); !s.ok()) return s;
  const int64_t now = now_ms_();
  for (const std::string& user : request.user_ids()) {
    owner_[user] = client;
    joined_.insert(user);
    last_seen_ms_[user] = now;
    if (request.allows_plain_aggregation()) {
      allows_plain_.insert(user);
    } else {
      allows_plain_.erase(user);
    }
  }
  JoinResponse r;
  r.set_layout_fingerprint(layout_fingerprint_);
  r.set_last_committed_round(machine_->last_committed_round());
  r.set_poll_interval_ms(settings_.poll_interval_ms);
  r.set_aggregation(settings_.round.secure_aggregation ? AGGREGATION_SECAGG_PLUS : AGGREGATION_PLAIN);
  return r;
}

absl::Status CoordinatorRuntime::Leave(const std::string& client, const LeaveRequest& request) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& user : request.user_ids()) {
    if (absl::Status s = OwnsUser(client, user); !s.ok()) return s;
  }
  for (const std::string& user : request.user_ids()) {
    joined_.erase(user);
    allows_plain_.erase(user);
  }
  return absl::OkStatus();
}

absl::StatusOr<PollResponse> CoordinatorRuntime::Poll(const std::string& client, const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = InSession(client, user); !s.ok()) return s;
  last_seen_ms_[user] = now_ms_();
  std::deque<PollResponse>& box = outbox_[user];
  if (box.empty()) {
    PollResponse idle;
    idle.set_poll_after_ms(settings_.poll_interval_ms);
    return idle;
  }
  PollResponse next = std::move(box.front());
  box.pop_front();
  // The outbox holds only the open round's invitations (a round's end
  // clears it); they share the round's one copy of the global adapter.
  if (next.has_invitation()) next.mutable_invitation()->set_global_adapter(machine_->round_global_adapter());
  return next;
}

absl::Status CoordinatorRuntime::Upload(const std::string& client, const SecAggUpload& upload) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = InSession(client, upload.user_id()); !s.ok()) return s;
  last_seen_ms_[upload.user_id()] = now_ms_();
  if (machine_->stage() == RoundStage::kIdle || upload.round() != machine_->current_round()) {
    return absl::FailedPreconditionError(absl::StrCat("round ", upload.round(), " is not running"));
  }
  return machine_->Handle(upload.user_id(), upload.message());
}

absl::StatusOr<int64_t> CoordinatorRuntime::PutResidual(const std::string& client, const std::string& user,
                                                        std::span<const uint8_t> blob, bool sealed) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = OwnsUser(client, user); !s.ok()) return s;
  return store_->PutResidual(user, blob, sealed);
}

absl::StatusOr<std::vector<uint8_t>> CoordinatorRuntime::GetResidual(const std::string& client, const std::string& user,
                                                                     int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = OwnsUser(client, user); !s.ok()) return s;
  return store_->GetResidual(user, version > 0 ? std::optional<int64_t>(version) : std::nullopt);
}

absl::StatusOr<int> CoordinatorRuntime::DeleteResidual(const std::string& client, const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = OwnsUser(client, user); !s.ok()) return s;
  return store_->DeleteResidual(user);
}

void CoordinatorRuntime::FinishRound(bool committed, const std::string& reason) {
  for (const std::string& user : participants_) {
    PollResponse done;
    done.mutable_finished()->set_round(machine_->current_round());
    done.mutable_finished()->set_committed(committed);
    done.mutable_finished()->set_reason(reason);
    outbox_[user].clear();  // nothing of the ended round is still due
    outbox_[user].push_back(std::move(done));
  }
  participants_.clear();
  last_round_end_ms_ = now_ms_();
  if (committed) ++committed_here_;
}

std::vector<std::string> CoordinatorRuntime::EligibleUsers(int64_t now) const {
  std::vector<std::string> eligible;
  for (const std::string& user : joined_) {
    auto seen = last_seen_ms_.find(user);
    if (seen == last_seen_ms_.end() || now - seen->second > settings_.liveness_timeout_ms) continue;
    auto dropped = dropped_ms_.find(user);
    if (dropped != dropped_ms_.end() && seen->second <= dropped->second) continue;
    if (!settings_.round.secure_aggregation && !allows_plain_.count(user)) continue;
    eligible.push_back(user);
  }
  return eligible;
}

std::vector<float> CoordinatorRuntime::GlobalAdapter() const {
  std::lock_guard<std::mutex> lock(mu_);
  const Eigen::VectorXf& g = machine_->global();
  return std::vector<float>(g.data(), g.data() + g.size());
}

bool CoordinatorRuntime::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return settings_.max_rounds > 0 && committed_here_ >= settings_.max_rounds;
}

absl::StatusOr<CoordinatorRuntime::TickResult> CoordinatorRuntime::Tick() {
  std::lock_guard<std::mutex> lock(mu_);
  TickResult result;
  const int64_t now = now_ms_();
  if (machine_->stage() == RoundStage::kIdle) {
    if (paused_ || (settings_.max_rounds > 0 && committed_here_ >= settings_.max_rounds)) return result;
    if (now - last_round_end_ms_ < settings_.round_interval_ms) return result;
    std::vector<std::string> eligible = EligibleUsers(now);
    if (static_cast<int64_t>(eligible.size()) < settings_.round.min_clients) return result;
    uint64_t seed = 0;
    if (settings_.round.seed != 0) {
      seed = RoundSeed(settings_.round.seed, machine_->current_round() + 1);
    } else {
      absl::StatusOr<secagg::Key32> fresh = secagg::RandomKey32();
      if (!fresh.ok()) return fresh.status();
      std::memcpy(&seed, fresh->data(), sizeof(seed));
    }
    // A refusal stands while the users it was made for do: asking again at
    // every tick would only repeat it (and the ledger's projection).
    if (!open_refused_.empty() && eligible == refused_eligible_ &&
        now - refused_at_ms_ < kRetryRefusedOpenMs) {
      return result;
    }
    absl::StatusOr<std::map<std::string, RoundInvitation>> invitations = machine_->Open(eligible, seed);
    if (!invitations.ok()) {
      // A budget or the store refused it: stay idle and say why.
      std::string reason(invitations.status().message());
      result.refusal_repeated = reason == open_refused_;
      result.refused = reason;
      open_refused_ = std::move(reason);
      refused_eligible_ = std::move(eligible);
      refused_at_ms_ = now;
      last_round_end_ms_ = now;
      return result;
    }
    open_refused_.clear();
    refused_eligible_.clear();
    for (auto& [user, inv] : *invitations) {
      PollResponse p;
      *p.mutable_invitation() = std::move(inv);
      outbox_[user].push_back(std::move(p));
      participants_.insert(user);
    }
    stage_started_ms_ = now;
    result.opened = true;
    return result;
  }
  const bool complete = machine_->expected().empty();
  if (!complete && now - stage_started_ms_ < settings_.stage_timeout_ms) return result;
  for (const std::string& user : machine_->expected()) dropped_ms_[user] = now;
  absl::StatusOr<RoundMachine::StageOutput> out = machine_->FinishStage();
  if (!out.ok()) {
    result.aborted = std::string(out.status().message());
    FinishRound(false, *result.aborted);
    return result;
  }
  for (auto& [user, msg] : out->outgoing) {
    PollResponse p;
    *p.mutable_secagg() = std::move(msg);
    outbox_[user].push_back(std::move(p));
  }
  stage_started_ms_ = now;
  if (out->committed) {
    result.committed = out->committed;
    FinishRound(true, "");
  }
  return result;
}

StatusResponse CoordinatorRuntime::AdminSetPaused(bool paused) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = paused;
  }
  return AdminStatus();
}

StatusResponse CoordinatorRuntime::AdminStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusResponse s;
  s.set_paused(paused_);
  s.set_eligible_users(static_cast<int64_t>(EligibleUsers(now_ms_()).size()));
  s.set_min_clients(settings_.round.min_clients);
  s.set_max_rounds_reached(settings_.max_rounds > 0 && committed_here_ >= settings_.max_rounds);
  s.set_open_refused(open_refused_);
  s.set_last_committed_round(machine_->last_committed_round());
  s.set_stage(StageName(machine_->stage()));
  s.set_current_round(machine_->current_round());
  std::set<std::string> clients;
  for (const std::string& user : joined_) clients.insert(owner_.at(user));
  s.set_connected_clients(static_cast<int64_t>(clients.size()));
  s.set_joined_users(static_cast<int64_t>(joined_.size()));
  s.set_epsilon(machine_->ledger().epsilon());
  s.set_delta(machine_->ledger().delta());
  s.set_epsilon_budget(machine_->ledger().budget());
  s.set_epsilon_budget_against_coordinator(machine_->ledger().budget_against_coordinator());
  if (std::optional<double> e = machine_->ledger().epsilon_against_coordinator())
    s.set_epsilon_against_coordinator(*e);
  return s;
}

absl::StatusOr<RoundsResponse> CoordinatorRuntime::AdminRounds(int limit, int64_t before_round) {
  if (limit < 0) return absl::InvalidArgumentError(absl::StrCat("a round limit must be >= 0, got ", limit));
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<int64_t> total = store_->RoundCount();
  if (!total.ok()) return total.status();
  RoundsResponse r;
  r.set_total_rounds(*total);
  // A round's row carries its contributors, so its size varies with the
  // sample: read a few rows at a time until the page is full.
  constexpr int kBatch = 64;
  int64_t next = before_round;
  const size_t page_bytes = static_cast<size_t>(settings_.admin_page_bytes);
  size_t bytes = 0;  // the page so far; 8 bounds a row's tag and length prefix
  bool full = false;
  while (!full) {
    const int want = limit == 0 ? kBatch : std::min(kBatch, limit - r.rounds_size());
    absl::StatusOr<std::vector<RoundRow>> rows = store_->Rounds(want + 1, next);  // one more tells if any follow
    if (!rows.ok()) return rows.status();
    const bool more_in_store = static_cast<int>(rows->size()) > want;
    for (int i = 0; i < std::min<int>(want, rows->size()); ++i) {
      const RoundRow& row = (*rows)[i];
      RoundInfo info;
      info.set_round(row.round);
      info.set_state(row.state);
      info.set_opened_unix(row.opened_unix);
      info.set_closed_unix(row.closed_unix);
      info.set_metrics_json(row.metrics_json);
      info.set_abort_reason(row.abort_reason);
      const size_t row_bytes = info.ByteSizeLong() + 8;
      if (r.rounds_size() > 0 && bytes + row_bytes > page_bytes) {
        full = true;
        break;
      }
      bytes += row_bytes;
      *r.add_rounds() = std::move(info);
      next = row.round;
    }
    if (!more_in_store && !full) {
      next = 0;  // the store has no older round
      break;
    }
    if (limit > 0 && r.rounds_size() == limit) break;
  }
  r.set_next_before_round(next);
  return r;
}

absl::StatusOr<ClientsResponse> CoordinatorRuntime::AdminClients() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::vector<ClientRow>> rows = store_->Clients();
  if (!rows.ok()) return rows.status();
  // The store keeps each client's last join (written once per join); its
  // polls since this process started are in last_seen_ms_, by user.
  std::map<std::string, int64_t> polled_ms;
  for (const auto& [user, seen] : last_seen_ms_) {
    auto owner = owner_.find(user);
    if (owner == owner_.end()) continue;
    int64_t& newest = polled_ms[owner->second];
    newest = std::max(newest, seen);
  }
  const int64_t now_ms = now_ms_();
  const int64_t now_unix =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  ClientsResponse r;
  for (const ClientRow& row : *rows) {
    ClientInfo* c = r.add_clients();
    c->set_client_id(row.client_id);
    c->set_cert_fingerprint(row.cert_fingerprint);
    c->set_first_seen_unix(row.first_seen_unix);
    int64_t last_seen = row.last_seen_unix;
    if (auto it = polled_ms.find(row.client_id); it != polled_ms.end()) {
      last_seen = std::max(last_seen, now_unix - (now_ms - it->second) / 1000);
    }
    c->set_last_seen_unix(last_seen);
  }
  return r;
}

absl::StatusOr<UsersResponse> CoordinatorRuntime::AdminUsers(int limit, const std::string& after_user_id) {
  if (limit < 0) return absl::InvalidArgumentError(absl::StrCat("a user limit must be >= 0, got ", limit));
  // User rows are small (ids of at most 256 bytes): a page is at most this
  // many, then cut at page_bytes.
  constexpr int kPageRows = 4096;
  const int want = limit == 0 ? kPageRows : std::min(limit, kPageRows);
  std::lock_guard<std::mutex> lock(mu_);
  // The page's users are the first `want` of the union of bound users and
  // users with residuals after the cursor; each source's first `want` (plus
  // one, to tell whether any follow) covers them.
  absl::StatusOr<std::vector<ResidualSummary>> stored = store_->ResidualSummaries(after_user_id, want + 1);
  if (!stored.ok()) return stored.status();
  std::map<std::string, UserInfo> candidates;
  for (const ResidualSummary& row : *stored) {
    UserInfo& u = candidates[row.user_id];
    u.set_user_id(row.user_id);
    u.set_residual_versions(row.versions);
    u.set_sealed(row.sealed);
    u.set_bytes(row.bytes);
  }
  int taken = 0;
  for (auto it = owner_.upper_bound(after_user_id); it != owner_.end() && taken <= want; ++it, ++taken) {
    UserInfo& u = candidates[it->first];
    u.set_user_id(it->first);
    u.set_client_id(it->second);
  }
  UsersResponse r;
  int listed = 0;
  const size_t page_bytes = static_cast<size_t>(settings_.admin_page_bytes);
  size_t bytes = 0;  // the page so far; 8 bounds a row's tag and length prefix
  for (auto& [user, info] : candidates) {
    if (listed == want) {
      r.set_next_after_user_id(r.users(r.users_size() - 1).user_id());
      break;
    }
    absl::StatusOr<double> eps = machine_->ledger().UserEpsilon(user);
    info.set_epsilon(eps.ok() ? *eps : 0);
    if (std::optional<double> e = machine_->ledger().UserEpsilonAgainstCoordinator(user)) {
      info.set_epsilon_against_coordinator(*e);
    }
    const size_t row_bytes = info.ByteSizeLong() + 8;
    if (r.users_size() > 0 && bytes + row_bytes > page_bytes) {
      r.set_next_after_user_id(r.users(r.users_size() - 1).user_id());
      break;
    }
    bytes += row_bytes;
    *r.add_users() = std::move(info);
    ++listed;
  }
  return r;
}

absl::StatusOr<MoveUserResponse> CoordinatorRuntime::AdminMoveUser(const std::string& user, const std::string& to_client) {
  std::lock_guard<std::mutex> lock(mu_);
  if (to_client.empty() || to_client.size() > 64) return absl::InvalidArgumentError("the client name must be 1-64 bytes");
  if (participants_.count(user)) {
    return absl::FailedPreconditionError(absl::StrCat("user '", user, "' takes part in round ",
                                                      machine_->current_round(), "; move it once the round ends"));
  }
  absl::StatusOr<std::string> previous = store_->MoveUser(user, to_client);
  if (!previous.ok()) return previous.status();
  // Outside the running round a user's undelivered messages only tell the
  // old client how ended rounds ended; a client that is gone for good (the
  // reason to move its users) would never poll them.
  outbox_.erase(user);
  owner_[user] = to_client;
  joined_.erase(user);
  allows_plain_.erase(user);
  last_seen_ms_.erase(user);
  dropped_ms_.erase(user);
  MoveUserResponse r;
  r.set_previous_client_id(*previous);
  return r;
}

}  // namespace fedpers
