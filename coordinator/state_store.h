// The coordinator's persistent state: SQLite in WAL mode for rounds,
// clients, users and residual blobs; global adapter versions as safetensors
// files written atomically beside it and referenced (with their SHA-256)
// from the database.
//
// A round commits in one transaction (round row, global version row, privacy
// ledger snapshot, strategy state) after its global file is durably in place,
// so after a crash at any point the store holds either the previous committed
// round or the new one, never a mix. Rounds a crash left open are marked
// aborted by RecoverOpenRounds. Not thread-safe: one owner thread.
#ifndef FEDPERS_COORDINATOR_STATE_STORE_H_
#define FEDPERS_COORDINATOR_STATE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

struct sqlite3;

namespace fedpers {

struct RoundRow {
  int64_t round = 0;
  std::string state;  // "open", "committed" or "aborted"
  int64_t opened_unix = 0, closed_unix = 0;
  std::string config_json, metrics_json, abort_reason;
};

struct CommittedState {
  int64_t round = 0;
  std::vector<uint8_t> global_safetensors;  // verified against its SHA-256
  std::string ledger_json;
  std::vector<uint8_t> strategy_state;
};

struct ClientRow {
  std::string client_id, cert_fingerprint;
  int64_t first_seen_unix = 0, last_seen_unix = 0;
};

struct UserRow {
  std::string user_id, client_id;  // the client that hosts the user
  int64_t first_joined_unix = 0, last_joined_unix = 0;
};

// A user's stored residuals: how many versions, and the latest one's
// sealing and size.
struct ResidualSummary {
  std::string user_id;
  int64_t versions = 0;
  bool sealed = true;
  int64_t bytes = 0;
};

class StateStore {
 public:
  // Opens or creates `dir`/state.sqlite3 (and `dir`/global/). Checks the
  // schema version. DataLoss for a new database beside round files, a
  // written one that lost a table, or one that does not know the newest
  // round file (older than the files). Errors name the path.
  static absl::StatusOr<std::unique_ptr<StateStore>> Open(const std::string& dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // PRAGMA integrity_check; DataLoss with SQLite's report unless "ok".
  absl::Status CheckIntegrity();

  // Round lifecycle. Round numbers strictly increase across all rounds.
  // CommitRound keeps `ledger_json` with the newest commit only (older
  // versions' ledgers are emptied in the same transaction).
  absl::Status OpenRound(int64_t round, const std::string& config_json);
  absl::Status CommitRound(int64_t round, std::span<const uint8_t> global_safetensors, const std::string& metrics_json,
                           const std::string& ledger_json, std::span<const uint8_t> strategy_state);
  absl::Status AbortRound(int64_t round, const std::string& reason);
  // Replaces an open round's metrics with what it has revealed so far, so
  // that an abort or a crash keeps it (a commit replaces them again).
  // FailedPrecondition when the round is not open.
  absl::Status NoteOpenRound(int64_t round, const std::string& metrics_json);
  // Marks rounds left open (by a crash) aborted; returns how many.
  absl::StatusOr<int> RecoverOpenRounds();
  // The latest committed round, or nullopt before the first commit. DataLoss
  // when its global file is missing or does not match its hash.
  absl::StatusOr<std::optional<CommittedState>> LatestCommitted();
  // Newest first, those numbered below `before_round` (0: no bound), at most
  // `limit` (0: every one). InvalidArgument for a negative limit or bound.
  absl::StatusOr<std::vector<RoundRow>> Rounds(int limit = 100, int64_t before_round = 0);
  // Rounds recorded (open, committed and aborted).
  absl::StatusOr<int64_t> RoundCount();

  // A client's join: records the client (first and last seen, by
  // certificate identity) and binds its users to it. A user is bound at its
  // first join and stays bound across restarts: only that client may take
  // part for the user or read, replace or delete the user's residuals. One
  // transaction; PermissionDenied, and nothing written, when a user is bound
  // to another client.
  absl::Status RecordJoin(const std::string& client_id, const std::string& cert_fingerprint,
                          const std::vector<std::string>& user_ids);
  absl::StatusOr<std::vector<ClientRow>> Clients();
  // Sorted by user id.
  absl::StatusOr<std::vector<UserRow>> Users();
  // Binds a bound user to `to_client_id` instead; returns the client it was
  // bound to. NotFound when the user is not bound.
  absl::StatusOr<std::string> MoveUser(const std::string& user_id, const std::string& to_client_id);

  // Residual blobs by user, versioned (1, 2, ...). `sealed` records whether
  // the blob is ciphertext only its client can open.
  absl::StatusOr<int64_t> PutResidual(const std::string& user_id, std::span<const uint8_t> blob, bool sealed);
  // The latest version, or `version`; NotFound when absent, DataLoss when the
  // stored bytes no longer match their hash.
  absl::StatusOr<std::vector<uint8_t>> GetResidual(const std::string& user_id, std::optional<int64_t> version = {});
  // Deletes every version of the user's residual; returns how many.
  absl::StatusOr<int> DeleteResidual(const std::string& user_id);
  // Users with stored residuals whose id sorts after `after_user_id` ("":
  // from the first), sorted by id, at most `limit` of them (0: every one).
  // InvalidArgument for a negative limit.
  absl::StatusOr<std::vector<ResidualSummary>> ResidualSummaries(const std::string& after_user_id = "", int limit = 0);

  const std::string& dir() const { return dir_; }

 private:
  StateStore() = default;
  absl::Status Exec(const std::string& sql);
  std::string GlobalPath(int64_t round) const;
  // DataLoss when a database that was written lacks a table of its schema.
  absl::Status CheckTablesOfExistingStore(const std::string& path);
  // DataLoss when global/ holds the file of a round the database never
  // opened (an older database beside newer rounds).
  absl::Status CheckRoundFilesAreKnown();

  std::string dir_;
  sqlite3* db_ = nullptr;
};

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_STATE_STORE_H_
