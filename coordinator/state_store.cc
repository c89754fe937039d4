#include "coordinator/state_store.h"

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "secure_agg/crypto.h"

namespace fedpers {
namespace {

// 2 added the users table (user -> client bindings). Version 1 stores are
// upgraded in place (the table is created empty: users bind at their next
// join); a binary that reads version 1 refuses a version 2 store instead of
// ignoring the bindings.
constexpr int kSchemaVersion = 2;

int64_t NowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string Sha256Hex(std::span<const uint8_t> bytes) { return secagg::ToHex(secagg::Sha256({bytes})); }

// "state database 'PATH': SQLite <what> failed: <reason>", the path so that
// an operator knows which file; DataLoss when SQLite found the file damaged.
absl::Status SqliteError(sqlite3* db, absl::string_view what, absl::string_view reason) {
  const char* path = sqlite3_db_filename(db, "main");
  const std::string message =
      absl::StrCat("state database '", path ? path : "?", "': SQLite ", what, " failed: ", reason);
  const int code = sqlite3_errcode(db);
  return code == SQLITE_CORRUPT || code == SQLITE_NOTADB ? absl::DataLossError(message)
                                                         : absl::InternalError(message);
}
absl::Status SqliteError(sqlite3* db, absl::string_view what) {
  return SqliteError(db, what, sqlite3_errmsg(db));
}

// One prepared statement; finalizes itself.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return SqliteError(db_, "prepare");
  }
  Statement& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Statement& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Statement& BindBlob(int i, std::span<const uint8_t> v) {
    // An empty span has no data pointer, which SQLite would store as NULL.
    if (v.empty()) {
      sqlite3_bind_zeroblob(stmt_, i, 0);
    } else {
      sqlite3_bind_blob64(stmt_, i, v.data(), v.size(), SQLITE_TRANSIENT);
    }
    return *this;
  }
  // SQLITE_ROW: a row is ready; SQLITE_DONE: finished.
  absl::StatusOr<bool> Step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, "step");
  }
  absl::Status Run() {
    absl::StatusOr<bool> r = Step();
    return r.ok() ? absl::OkStatus() : r.status();
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), sqlite3_column_bytes(stmt_, col)) : std::string();
  }
  std::vector<uint8_t> Blob(int col) const {
    const uint8_t* p = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, col));
    return p ? std::vector<uint8_t>(p, p + sqlite3_column_bytes(stmt_, col)) : std::vector<uint8_t>();
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    ok_ = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (ok_ && !done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  absl::Status status() const { return ok_ ? absl::OkStatus() : SqliteError(db_, "BEGIN"); }
  absl::Status Commit() {
    if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
      return SqliteError(db_, "COMMIT");
    }
    done_ = true;
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  bool ok_ = false, done_ = false;
};

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
  round INTEGER PRIMARY KEY,
  state TEXT NOT NULL CHECK (state IN ('open', 'committed', 'aborted')),
  opened_unix INTEGER NOT NULL,
  closed_unix INTEGER NOT NULL DEFAULT 0,
  config_json TEXT NOT NULL,
  metrics_json TEXT NOT NULL DEFAULT '',
  abort_reason TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS global_versions (
  round INTEGER PRIMARY KEY REFERENCES rounds(round),
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  ledger_json TEXT NOT NULL,
  strategy_state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
  client_id TEXT PRIMARY KEY,
  cert_fingerprint TEXT NOT NULL,
  first_seen_unix INTEGER NOT NULL,
  last_seen_unix INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
  user_id TEXT PRIMARY KEY,
  client_id TEXT NOT NULL,
  first_joined_unix INTEGER NOT NULL,
  last_joined_unix INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS residuals (
  user_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  sealed INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  blob BLOB NOT NULL,
  stored_unix INTEGER NOT NULL,
  PRIMARY KEY (user_id, version));
)sql";

// The client `user` is bound to, if any.
absl::StatusOr<std::optional<std::string>> BoundClient(sqlite3* db, const std::string& user) {
  Statement owner(db, "SELECT client_id FROM users WHERE user_id = ?");
  if (absl::Status s = owner.status(); !s.ok()) return s;
  absl::StatusOr<bool> row = owner.Bind(1, user).Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<std::string>();
  return std::optional<std::string>(owner.Text(0));
}

}  // namespace

StateStore::~StateStore() {
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

absl::Status StateStore::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s =
        SqliteError(db_, absl::StrCat("'", sql.substr(0, 80), "'"), err ? err : sqlite3_errmsg(db_));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

std::string StateStore::GlobalPath(int64_t round) const { return absl::StrCat(dir_, "/global/round-", round, ".safetensors"); }

absl::StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("the state directory's name is empty");
  std::error_code ec;
  std::filesystem::create_directories(dir + "/global", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create state directory '", dir, "': ", ec.message()));
  std::unique_ptr<StateStore> store(new StateStore());
  store->dir_ = dir;
  const std::string path = dir + "/state.sqlite3";
  if (sqlite3_open_v2(path.c_str(), &store->db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    return absl::InternalError(absl::StrCat("cannot open '", path, "': ", sqlite3_errmsg(store->db_)));
  }
  sqlite3_busy_timeout(store->db_, 5000);
  for (const char* pragma : {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    if (absl::Status s = store->Exec(pragma); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("'", path, "' is not a usable SQLite database: ", s.message()));
    }
  }
  // The schema is created only in a new database: in an existing one, a
  // table that is gone was lost (created again empty, its rows would be gone
  // without a word).
  if (absl::Status s = store->CheckTablesOfExistingStore(path); !s.ok()) return s;
  if (absl::Status s = store->Exec(kSchema); !s.ok()) return s;
  Statement get(store->db_, "SELECT value FROM meta WHERE key = 'schema_version'");
  if (absl::Status s = get.status(); !s.ok()) return s;
  absl::StatusOr<bool> row = get.Step();
  if (!row.ok()) return row.status();
  if (!*row) {
    // A new database. Round files beside it mean the old one was emptied or
    // replaced: starting over would overwrite committed rounds and forget the
    // privacy ledger.
    int64_t round_files = 0;
    for (const auto& entry : std::filesystem::directory_iterator(dir + "/global", ec)) {
      if (entry.path().extension() == ".safetensors") ++round_files;
    }
    if (ec) return absl::InternalError(absl::StrCat("cannot list '", dir, "/global': ", ec.message()));
    if (round_files > 0) {
      return absl::DataLossError(absl::StrCat(
          "'", path, "' holds no coordinator state, but '", dir, "/global' holds ", round_files,
          " committed round file(s): the database was emptied or replaced. Restore it from a backup, or move "
          "the "
          "state directory aside to start a new federation (its privacy ledger starts from zero)"));
    }
    if (absl::Status s = store->Exec(absl::StrCat("INSERT INTO meta VALUES ('schema_version', '", kSchemaVersion, "')"));
        !s.ok()) {
      return s;
    }
  } else if (get.Text(0) == "1") {
    if (absl::Status s = store->Exec(absl::StrCat("UPDATE meta SET value = '", kSchemaVersion,
                                                  "' WHERE key = 'schema_version'"));
        !s.ok()) {
      return s;
    }
  } else if (get.Text(0) != std::to_string(kSchemaVersion)) {
    return absl::FailedPreconditionError(absl::StrCat("'", path, "' has schema version ", get.Text(0),
                                                      "; this fedpers reads version ", kSchemaVersion));
  }
  if (absl::Status s = store->CheckRoundFilesAreKnown(); !s.ok()) return s;
  return store;
}

absl::Status StateStore::CheckTablesOfExistingStore(const std::string& path) {
  std::set<std::string> tables;
  {
    Statement st(db_, "SELECT name FROM sqlite_master WHERE type = 'table'");
    if (absl::Status s = st.status(); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat("'", path, "' is not a usable SQLite database: ", s.message()));
    }
    while (true) {
      absl::StatusOr<bool> row = st.Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      tables.insert(st.Text(0));
    }
  }
  if (!tables.count("meta")) return absl::OkStatus();  // new
  std::string version;
  {
    Statement get(db_, "SELECT value FROM meta WHERE key = 'schema_version'");
    if (absl::Status s = get.status(); !s.ok()) return s;
    absl::StatusOr<bool> row = get.Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::OkStatus();  // created, never written: new
    version = get.Text(0);
  }
  std::vector<std::string> required = {"rounds", "global_versions", "clients", "residuals"};
  if (version != "1") required.push_back("users");  // version 1 gains it on upgrade
  for (const std::string& table : required) {
    if (!tables.count(table)) {
      return absl::DataLossError(absl::StrCat("'", path, "' lacks its '", table,
                                              "' table: the database was damaged. Restore it from a backup"));
    }
  }
  return absl::OkStatus();
}

absl::Status StateStore::CheckRoundFilesAreKnown() {
  Statement last(db_, "SELECT COALESCE(MAX(round), 0) FROM rounds");
  if (absl::Status s = last.status(); !s.ok()) return s;
  if (absl::StatusOr<bool> r = last.Step(); !r.ok()) return r.status();
  const int64_t last_round = last.Int(0);
  // A round's file is written just before its commit, so a crash may leave
  // the file of an open round; a file of a round the database never opened
  // means the database is older than the files (restored from a backup): going
  // on would forget the privacy those rounds spent and overwrite them.
  std::error_code ec;
  int64_t newest_file = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir_ + "/global", ec)) {
    const std::string name = entry.path().filename().string();
    int64_t round = 0;
    if (name.rfind("round-", 0) != 0 || entry.path().extension() != ".safetensors" ||
        !absl::SimpleAtoi(name.substr(6, name.size() - 6 - std::string(".safetensors").size()), &round)) {
      continue;
    }
    newest_file = std::max(newest_file, round);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list '", dir_, "/global': ", ec.message()));
  if (newest_file > last_round) {
    return absl::DataLossError(absl::StrCat(
        "'", dir_, "/global' holds the file of round ", newest_file,
        ", but the state database knows rounds up to ", last_round,
        " only: the database is older than the round files (restored from a backup?), and going on "
        "would forget the privacy the later rounds spent and overwrite them. Restore the newest database, or "
        "move "
        "the state directory aside to start a new federation"));
  }
  return absl::OkStatus();
}

absl::Status StateStore::CheckIntegrity() {
  Statement st(db_, "PRAGMA integrity_check");
  if (absl::Status s = st.status(); !s.ok()) return s;
  std::string report;
  while (true) {
    absl::StatusOr<bool> row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    absl::StrAppend(&report, report.empty() ? "" : "; ", st.Text(0));
  }
  if (report != "ok") {
    return absl::DataLossError(
        absl::StrCat("state database '", sqlite3_db_filename(db_, "main"), "': integrity check: ", report));
  }
  return absl::OkStatus();
}

absl::Status StateStore::OpenRound(int64_t round, const std::string& config_json) {
  Statement last(db_, "SELECT COALESCE(MAX(round), 0) FROM rounds");
  if (absl::Status s = last.status(); !s.ok()) return s;
  if (absl::StatusOr<bool> r = last.Step(); !r.ok()) return r.status();
  if (round <= last.Int(0)) {
    return absl::InvalidArgumentError(absl::StrCat("round ", round, " is not after the last round ", last.Int(0)));
  }
  Statement ins(db_, "INSERT INTO rounds (round, state, opened_unix, config_json) VALUES (?, 'open', ?, ?)");
  if (absl::Status s = ins.status(); !s.ok()) return s;
  return ins.Bind(1, round).Bind(2, NowUnix()).Bind(3, config_json).Run();
}

absl::Status StateStore::CommitRound(int64_t round, std::span<const uint8_t> global, const std::string& metrics_json,
                                     const std::string& ledger_json, std::span<const uint8_t> strategy_state) {
  {
    Statement st(db_, "SELECT state FROM rounds WHERE round = ?");
    if (absl::Status s = st.status(); !s.ok()) return s;
    absl::StatusOr<bool> row = st.Bind(1, round).Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::NotFoundError(absl::StrCat("round ", round, " was never opened"));
    if (st.Text(0) != "open") return absl::FailedPreconditionError(absl::StrCat("round ", round, " is already ", st.Text(0)));
  }
  // The file first (atomically), then the rows that make it the current version.
  const std::string path = GlobalPath(round);
  if (absl::Status s = WriteFileAtomically(path, std::string(global.begin(), global.end())); !s.ok()) return s;
  Transaction tx(db_);
  if (absl::Status s = tx.status(); !s.ok()) return s;
  Statement up(db_, "UPDATE rounds SET state = 'committed', closed_unix = ?, metrics_json = ? WHERE round = ? AND state = 'open'");
  if (absl::Status s = up.status(); !s.ok()) return s;
  if (absl::Status s = up.Bind(1, NowUnix()).Bind(2, metrics_json).Bind(3, round).Run(); !s.ok()) return s;
  Statement gv(db_, "INSERT INTO global_versions (round, path, sha256, bytes, ledger_json, strategy_state) VALUES (?, ?, ?, ?, ?, ?)");
  if (absl::Status s = gv.status(); !s.ok()) return s;
  if (absl::Status s = gv.Bind(1, round)
                           .Bind(2, std::filesystem::path(path).filename().string())
                           .Bind(3, Sha256Hex(global))
                           .Bind(4, static_cast<int64_t>(global.size()))
                           .Bind(5, ledger_json)
                           .BindBlob(6, strategy_state)
                           .Run();
      !s.ok()) {
    return s;
  }
  // Privacy spent is never restored from an older version, so only the
  // newest commit keeps its ledger: the store grows by a round, not by a
  // ledger (one entry per user) per round.
  Statement prune(db_, "UPDATE global_versions SET ledger_json = '' WHERE round < ? AND ledger_json <> ''");
  if (absl::Status s = prune.status(); !s.ok()) return s;
  if (absl::Status s = prune.Bind(1, round).Run(); !s.ok()) return s;
  return tx.Commit();
}

absl::Status StateStore::AbortRound(int64_t round, const std::string& reason) {
  Statement up(db_, "UPDATE rounds SET state = 'aborted', closed_unix = ?, abort_reason = ? WHERE round = ? AND state = 'open'");
  if (absl::Status s = up.status(); !s.ok()) return s;
  if (absl::Status s = up.Bind(1, NowUnix()).Bind(2, reason).Bind(3, round).Run(); !s.ok()) return s;
  if (sqlite3_changes(db_) == 0) return absl::FailedPreconditionError(absl::StrCat("round ", round, " is not open"));
  return absl::OkStatus();
}

absl::Status StateStore::NoteOpenRound(int64_t round, const std::string& metrics_json) {
  Statement up(db_, "UPDATE rounds SET metrics_json = ? WHERE round = ? AND state = 'open'");
  if (absl::Status s = up.status(); !s.ok()) return s;
  if (absl::Status s = up.Bind(1, metrics_json).Bind(2, round).Run(); !s.ok()) return s;
  if (sqlite3_changes(db_) == 0)
    return absl::FailedPreconditionError(absl::StrCat("round ", round, " is not open"));
  return absl::OkStatus();
}

absl::StatusOr<int> StateStore::RecoverOpenRounds() {
  Statement up(db_, "UPDATE rounds SET state = 'aborted', closed_unix = ?, abort_reason = 'coordinator restarted' WHERE state = 'open'");
  if (absl::Status s = up.status(); !s.ok()) return s;
  if (absl::Status s = up.Bind(1, NowUnix()).Run(); !s.ok()) return s;
  return sqlite3_changes(db_);
}

absl::StatusOr<std::optional<CommittedState>> StateStore::LatestCommitted() {
  Statement st(db_, "SELECT g.round, g.path, g.sha256, g.ledger_json, g.strategy_state FROM global_versions g "
                    "JOIN rounds r ON r.round = g.round WHERE r.state = 'committed' ORDER BY g.round DESC LIMIT 1");
  if (absl::Status s = st.status(); !s.ok()) return s;
  absl::StatusOr<bool> row = st.Step();
  if (!row.ok()) return row.status();
  if (!*row) return std::optional<CommittedState>();
  CommittedState c;
  c.round = st.Int(0);
  const std::string path = dir_ + "/global/" + st.Text(1);
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) {
    return absl::DataLossError(absl::StrCat("global adapter of committed round ", c.round, " is unreadable: ", bytes.status().message()));
  }
  c.global_safetensors.assign(bytes->begin(), bytes->end());
  if (Sha256Hex(c.global_safetensors) != st.Text(2)) {
    return absl::DataLossError(absl::StrCat("global adapter file '", path, "' does not match its recorded SHA-256"));
  }
  c.ledger_json = st.Text(3);
  c.strategy_state = st.Blob(4);
  return std::optional<CommittedState>(std::move(c));
}

absl::StatusOr<std::vector<RoundRow>> StateStore::Rounds(int limit, int64_t before_round) {
  if (limit < 0)
    return absl::InvalidArgumentError(absl::StrCat("a round limit must be >= 0 (0: all), got ", limit));
  if (before_round < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("a round bound must be >= 0 (0: from the newest), got ", before_round));
  }
  Statement st(db_, "SELECT round, state, opened_unix, closed_unix, config_json, metrics_json, abort_reason FROM rounds "
                    "WHERE round < ? ORDER BY round DESC LIMIT ?");
  if (absl::Status s = st.status(); !s.ok()) return s;
  st.Bind(1, before_round == 0 ? std::numeric_limits<int64_t>::max() : before_round);
  st.Bind(2, limit == 0 ? -1 : limit);  // SQLite: a negative LIMIT is none
  std::vector<RoundRow> out;
  while (true) {
    absl::StatusOr<bool> row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back({st.Int(0), st.Text(1), st.Int(2), st.Int(3), st.Text(4), st.Text(5), st.Text(6)});
  }
  return out;
}

absl::StatusOr<int64_t> StateStore::RoundCount() {
  Statement st(db_, "SELECT COUNT(*) FROM rounds");
  if (absl::Status s = st.status(); !s.ok()) return s;
  absl::StatusOr<bool> row = st.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::InternalError("COUNT(*) returned no row");
  return st.Int(0);
}

absl::StatusOr<std::vector<ClientRow>> StateStore::Clients() {
  Statement st(db_, "SELECT client_id, cert_fingerprint, first_seen_unix, last_seen_unix FROM clients ORDER BY client_id");
  if (absl::Status s = st.status(); !s.ok()) return s;
  std::vector<ClientRow> out;
  while (true) {
    absl::StatusOr<bool> row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back({st.Text(0), st.Text(1), st.Int(2), st.Int(3)});
  }
  return out;
}

absl::Status StateStore::RecordJoin(const std::string& client, const std::string& fingerprint,
                                    const std::vector<std::string>& users) {
  if (client.empty()) return absl::InvalidArgumentError("empty client id");
  Transaction tx(db_);
  if (absl::Status s = tx.status(); !s.ok()) return s;
  const int64_t now = NowUnix();
  Statement touch(db_, "INSERT INTO clients (client_id, cert_fingerprint, first_seen_unix, last_seen_unix) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(client_id) DO UPDATE SET cert_fingerprint = excluded.cert_fingerprint, "
                       "last_seen_unix = excluded.last_seen_unix");
  if (absl::Status s = touch.status(); !s.ok()) return s;
  if (absl::Status s = touch.Bind(1, client).Bind(2, fingerprint).Bind(3, now).Bind(4, now).Run(); !s.ok()) return s;
  for (const std::string& user : users) {
    if (user.empty()) return absl::InvalidArgumentError("empty user id");
    absl::StatusOr<std::optional<std::string>> owner = BoundClient(db_, user);
    if (!owner.ok()) return owner.status();
    if (owner->has_value() && **owner != client) {
      return absl::PermissionDeniedError(absl::StrCat("user '", user, "' belongs to another client"));
    }
    Statement up(db_, "INSERT INTO users (user_id, client_id, first_joined_unix, last_joined_unix) VALUES (?, ?, ?, ?) "
                      "ON CONFLICT(user_id) DO UPDATE SET last_joined_unix = excluded.last_joined_unix");
    if (absl::Status s = up.status(); !s.ok()) return s;
    if (absl::Status s = up.Bind(1, user).Bind(2, client).Bind(3, now).Bind(4, now).Run(); !s.ok()) return s;
  }
  return tx.Commit();
}

absl::StatusOr<std::vector<UserRow>> StateStore::Users() {
  Statement st(db_, "SELECT user_id, client_id, first_joined_unix, last_joined_unix FROM users ORDER BY user_id");
  if (absl::Status s = st.status(); !s.ok()) return s;
  std::vector<UserRow> out;
  while (true) {
    absl::StatusOr<bool> row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back({st.Text(0), st.Text(1), st.Int(2), st.Int(3)});
  }
  return out;
}

absl::StatusOr<std::string> StateStore::MoveUser(const std::string& user, const std::string& to_client) {
  if (to_client.empty()) return absl::InvalidArgumentError("empty client id");
  Transaction tx(db_);
  if (absl::Status s = tx.status(); !s.ok()) return s;
  absl::StatusOr<std::optional<std::string>> owner = BoundClient(db_, user);
  if (!owner.ok()) return owner.status();
  if (!owner->has_value()) return absl::NotFoundError(absl::StrCat("user '", user, "' is not bound to any client"));
  const std::string client = **owner;
  Statement move(db_, "UPDATE users SET client_id = ? WHERE user_id = ?");
  if (absl::Status s = move.status(); !s.ok()) return s;
  if (absl::Status s = move.Bind(1, to_client).Bind(2, user).Run(); !s.ok()) return s;
  if (absl::Status s = tx.Commit(); !s.ok()) return s;
  return client;
}

absl::StatusOr<int64_t> StateStore::PutResidual(const std::string& user, std::span<const uint8_t> blob, bool sealed) {
  if (user.empty()) return absl::InvalidArgumentError("empty user id");
  Transaction tx(db_);
  if (absl::Status s = tx.status(); !s.ok()) return s;
  Statement last(db_, "SELECT COALESCE(MAX(version), 0) FROM residuals WHERE user_id = ?");
  if (absl::Status s = last.status(); !s.ok()) return s;
  if (absl::StatusOr<bool> r = last.Bind(1, user).Step(); !r.ok()) return r.status();
  const int64_t version = last.Int(0) + 1;
  Statement ins(db_, "INSERT INTO residuals (user_id, version, sealed, sha256, blob, stored_unix) VALUES (?, ?, ?, ?, ?, ?)");
  if (absl::Status s = ins.status(); !s.ok()) return s;
  if (absl::Status s = ins.Bind(1, user).Bind(2, version).Bind(3, sealed ? 1 : 0).Bind(4, Sha256Hex(blob)).BindBlob(5, blob)
                           .Bind(6, NowUnix())
                           .Run();
      !s.ok()) {
    return s;
  }
  if (absl::Status s = tx.Commit(); !s.ok()) return s;
  return version;
}

absl::StatusOr<std::vector<uint8_t>> StateStore::GetResidual(const std::string& user, std::optional<int64_t> version) {
  Statement st(db_, version ? "SELECT blob, sha256, version FROM residuals WHERE user_id = ? AND version = ?"
                            : "SELECT blob, sha256, version FROM residuals WHERE user_id = ? ORDER BY version DESC LIMIT 1");
  if (absl::Status s = st.status(); !s.ok()) return s;
  st.Bind(1, user);
  if (version) st.Bind(2, *version);
  absl::StatusOr<bool> row = st.Step();
  if (!row.ok()) return row.status();
  if (!*row) {
    return absl::NotFoundError(version ? absl::StrCat("user '", user, "' has no residual version ", *version)
                                       : absl::StrCat("user '", user, "' has no stored residual"));
  }
  std::vector<uint8_t> blob = st.Blob(0);
  if (Sha256Hex(blob) != st.Text(1)) {
    return absl::DataLossError(absl::StrCat("residual of user '", user, "' version ", st.Int(2), " fails its hash check"));
  }
  return blob;
}

absl::StatusOr<int> StateStore::DeleteResidual(const std::string& user) {
  Statement st(db_, "DELETE FROM residuals WHERE user_id = ?");
  if (absl::Status s = st.status(); !s.ok()) return s;
  if (absl::Status s = st.Bind(1, user).Run(); !s.ok()) return s;
  return sqlite3_changes(db_);
}

absl::StatusOr<std::vector<ResidualSummary>> StateStore::ResidualSummaries(const std::string& after_user_id, int limit) {
  if (limit < 0) return absl::InvalidArgumentError(absl::StrCat("a user limit must be >= 0 (0: all), got ", limit));
  // The primary key (user_id, version) serves both the range and the latest version.
  Statement st(db_, "SELECT r.user_id, c.n, r.sealed, LENGTH(r.blob) FROM residuals r JOIN "
                    "(SELECT user_id, COUNT(*) AS n, MAX(version) AS v FROM residuals WHERE user_id > ? "
                    "GROUP BY user_id ORDER BY user_id LIMIT ?) c ON r.user_id = c.user_id AND r.version = c.v "
                    "ORDER BY r.user_id");
  if (absl::Status s = st.status(); !s.ok()) return s;
  st.Bind(1, after_user_id);
  st.Bind(2, limit == 0 ? -1 : limit);
  std::vector<ResidualSummary> out;
  while (true) {
    absl::StatusOr<bool> row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back({st.Text(0), st.Int(1), st.Int(2) != 0, st.Int(3)});
  }
  return out;
}

}  // namespace fedpers
