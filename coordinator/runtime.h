// The coordinator runtime behind the gRPC service (and the simulation's
// in-memory transport): users join through their client, poll for work and
// upload SecAgg+ messages; Tick() opens rounds and closes stages when every
// expected user answered or the stage deadline passed (stragglers count as
// dropouts, which SecAgg+ recovers from).
//
// Identities are given by the transport (the mutual-TLS certificate name);
// a user belongs to the first client that joins with it, for good: the
// binding is stored and outlives restarts. Thread-safe: every public method
// takes the runtime's lock.
#ifndef FEDPERS_COORDINATOR_RUNTIME_H_
#define FEDPERS_COORDINATOR_RUNTIME_H_

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/round_machine.h"
#include "coordinator/state_store.h"
#include "fedpers/v1/admin.pb.h"
#include "fedpers/v1/federation.pb.h"

namespace fedpers {

// A page must stay below what the gRPC server sends (64 MiB).
inline constexpr int64_t kMaxAdminPageBytes = int64_t{16} << 20;

struct RuntimeSettings {
  RoundSettings round;
  int64_t stage_timeout_ms = 30000;    // a stage closes this long after it began
  int64_t round_interval_ms = 0;       // pause between rounds
  int64_t max_rounds = 0;              // 0: no limit
  uint32_t poll_interval_ms = 200;     // suggested to idle clients
  // A user is sampled only if its client polled for it within this window,
  // and, after missing a stage deadline, only once it polled again: a
  // crashed client stops being invited instead of dropping out of every
  // later round.
  int64_t liveness_timeout_ms = 30000;
  bool start_paused = false;  // open no round until an admin resumes
  // Admin listings are cut into replies of about this size (at least one
  // row each), so no reply grows with the rounds and users stored and the
  // lock is held for one page.
  int64_t admin_page_bytes = int64_t{1} << 20;
  // Positive timeouts, interval and max_rounds >= 0, admin_page_bytes in
  // [1, kMaxAdminPageBytes], and the round settings (RoundSettings::Validate).
  absl::Status Validate() const;
};

class CoordinatorRuntime {
 public:
  // `now_ms` is the clock (milliseconds); tests pass a fake one.
  static absl::StatusOr<std::unique_ptr<CoordinatorRuntime>> Create(StateStore* store, FlatLayout layout,
                                                                    RuntimeSettings settings,
                                                                    std::function<int64_t()> now_ms = {});

  // Binds each user not yet bound to `client` and records the join (with
  // the certificate's fingerprint, when the transport has one).
  // PermissionDenied when a user belongs to another client, FailedPrecondition
  // when the layout differs.
  absl::StatusOr<fedpers::v1::JoinResponse> Join(const std::string& client, const fedpers::v1::JoinRequest& request,
                                                 const std::string& cert_fingerprint = "");
  // The users leave: no round samples them until they join again (a user in
  // the running round that no longer answers is a dropout). PermissionDenied
  // for a user of another client, FailedPrecondition for one never bound;
  // nothing changes then.
  absl::Status Leave(const std::string& client, const fedpers::v1::LeaveRequest& request);
  // Poll and Upload: only for users that joined since this runtime started
  // (FailedPrecondition otherwise: the client joins again).
  absl::StatusOr<fedpers::v1::PollResponse> Poll(const std::string& client, const std::string& user_id);
  absl::Status Upload(const std::string& client, const fedpers::v1::SecAggUpload& upload);

  // Residuals, only for users the client owns, joined since this start or
  // not: a client may fetch or delete them without taking part in rounds.
  // FailedPrecondition for a user bound to no client (it never joined).
  absl::StatusOr<int64_t> PutResidual(const std::string& client, const std::string& user_id,
                                      std::span<const uint8_t> blob, bool sealed);
  absl::StatusOr<std::vector<uint8_t>> GetResidual(const std::string& client, const std::string& user_id,
                                                   int64_t version);
  absl::StatusOr<int> DeleteResidual(const std::string& client, const std::string& user_id);

  struct TickResult {
    bool opened = false;
    std::optional<RoundSummary> committed;
    std::optional<std::string> aborted;  // a running round ended without a commit: why
    // An attempt to open a round was refused (a privacy budget, the store):
    // why. `refusal_repeated` when the previous attempt was refused for the
    // same reason (a server logs a reason once).
    std::optional<std::string> refused;
    bool refusal_repeated = false;
  };
  // Advances the schedule: opens a round when idle, enough users joined and
  // the interval passed; closes the current stage when it is complete or
  // overdue. Call it often (the server runs it on a timer). After a refused
  // open it tries again once the eligible users change, or after
  // kRetryRefusedOpenMs (a refusal by budget lasts while they do not).
  absl::StatusOr<TickResult> Tick();

  // Admin views.
  fedpers::v1::StatusResponse AdminStatus();
  // Stops or restarts the opening of new rounds; a running round goes on.
  fedpers::v1::StatusResponse AdminSetPaused(bool paused);
  // Listings come in pages of about settings' admin_page_bytes.
  // One page of rounds, newest first: those numbered below `before_round`
  // (0: from the newest), at most `limit` (0: what the page holds), with the
  // store's total count and where the next page starts (0: no older rounds).
  // InvalidArgument for a negative limit or bound.
  absl::StatusOr<fedpers::v1::RoundsResponse> AdminRounds(int limit, int64_t before_round = 0);
  absl::StatusOr<fedpers::v1::ClientsResponse> AdminClients();
  // One page of users (bound to a client or with stored residuals), sorted
  // by id: those after `after_user_id` ("": from the first), at most `limit`
  // (0: what the page holds; never more than 4,096), and the id the next
  // page starts after ("": none follow). InvalidArgument for a negative
  // limit. Pages are not a snapshot: a user that joins during a walk with
  // an id before the cursor is not listed by it.
  absl::StatusOr<fedpers::v1::UsersResponse> AdminUsers(int limit = 0, const std::string& after_user_id = "");
  // Binds `user_id` to `to_client` (see MoveUserRequest), which must join
  // with it before it takes part. NotFound for a user that never joined,
  // FailedPrecondition while it takes part in the running round. Its
  // undelivered messages (how ended rounds ended) are dropped.
  absl::StatusOr<fedpers::v1::MoveUserResponse> AdminMoveUser(const std::string& user_id, const std::string& to_client);

  bool finished() const;  // max_rounds committed

  static constexpr int64_t kRetryRefusedOpenMs = 10000;
  // A copy of the current global adapter (flat, in the layout's order).
  std::vector<float> GlobalAdapter() const;

 private:
  CoordinatorRuntime() = default;
  absl::Status OwnsUser(const std::string& client, const std::string& user) const;
  absl::Status InSession(const std::string& client, const std::string& user) const;
  void FinishRound(bool committed, const std::string& reason);
  // Users that may be sampled now (sorted): alive, not silent since a drop,
  // and, for rounds without secure aggregation, willing to take part.
  std::vector<std::string> EligibleUsers(int64_t now) const;

  mutable std::mutex mu_;
  StateStore* store_ = nullptr;
  RuntimeSettings settings_;
  std::function<int64_t()> now_ms_;
  std::unique_ptr<RoundMachine> machine_;
  uint64_t layout_fingerprint_ = 0;
  std::map<std::string, std::string> owner_;  // user -> client, as stored
  std::set<std::string> joined_;              // users that joined since this runtime started
  std::set<std::string> allows_plain_;        // users whose client takes plain rounds
  std::map<std::string, std::deque<fedpers::v1::PollResponse>> outbox_;  // by user
  std::set<std::string> participants_;
  std::map<std::string, int64_t> last_seen_ms_;  // by user: last join, poll or upload
  std::map<std::string, int64_t> dropped_ms_;    // by user: when it last missed a stage deadline
  int64_t stage_started_ms_ = 0;
  int64_t last_round_end_ms_ = 0;
  int64_t committed_here_ = 0;
  bool paused_ = false;
  // The last refused attempt to open a round: why, for which eligible
  // users, when. Cleared when a round opens.
  std::string open_refused_;
  std::vector<std::string> refused_eligible_;
  int64_t refused_at_ms_ = 0;
};

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_RUNTIME_H_
