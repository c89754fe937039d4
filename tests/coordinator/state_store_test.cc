#include "coordinator/state_store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"

namespace fedpers {
namespace {

std::string FreshDir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/store_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  return d;
}

std::vector<uint8_t> Blob(int seed, size_t n = 1000) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  return b;
}

TEST(StateStoreTest, RoundsCommitAndSurviveReopening) {
  const std::string dir = FreshDir("rounds");
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_FALSE((*store)->LatestCommitted()->has_value());
    ASSERT_TRUE((*store)->OpenRound(1, "{}").ok());
    ASSERT_TRUE((*store)->CommitRound(1, Blob(1), "{\"loss\":1}", "{\"eps\":0.1}", Blob(9, 16)).ok());
    ASSERT_TRUE((*store)->OpenRound(2, "{}").ok());
    ASSERT_TRUE((*store)->AbortRound(2, "too few clients").ok());
    ASSERT_TRUE((*store)->OpenRound(3, "{}").ok());  // left open: a crash
    EXPECT_FALSE((*store)->OpenRound(3, "{}").ok()) << "round numbers increase";
    EXPECT_FALSE((*store)->CommitRound(2, Blob(2), "", "", {}).ok()) << "an aborted round cannot commit";
  }
  auto store = StateStore::Open(dir);
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*(*store)->RecoverOpenRounds(), 1);
  auto latest = (*store)->LatestCommitted();
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->round, 1);
  EXPECT_EQ((*latest)->global_safetensors, Blob(1));
  EXPECT_EQ((*latest)->ledger_json, "{\"eps\":0.1}");
  EXPECT_EQ((*latest)->strategy_state, Blob(9, 16));
  auto rounds = (*store)->Rounds();
  ASSERT_EQ(rounds->size(), 3u);
  EXPECT_EQ((*rounds)[0].state, "aborted");
  EXPECT_EQ((*rounds)[0].abort_reason, "coordinator restarted");
  EXPECT_EQ((*rounds)[1].abort_reason, "too few clients");
  EXPECT_EQ((*rounds)[2].state, "committed");
  EXPECT_EQ(*(*store)->RoundCount(), 3);
  EXPECT_EQ((*store)->Rounds(0)->size(), 3u) << "0: every round";
  ASSERT_EQ((*store)->Rounds(2)->size(), 2u);
  EXPECT_EQ((*store)->Rounds(2)->back().round, 2) << "the newest first";
  EXPECT_EQ((*store)->Rounds(-1).status().code(), absl::StatusCode::kInvalidArgument);
  // Pages: rounds below a bound, newest first.
  auto older = (*store)->Rounds(0, 3);
  ASSERT_EQ(older->size(), 2u);
  EXPECT_EQ((*older)[0].round, 2);
  EXPECT_EQ((*older)[1].round, 1);
  EXPECT_EQ((*store)->Rounds(1, 3)->at(0).round, 2);
  EXPECT_TRUE((*store)->Rounds(0, 1)->empty()) << "no round below the first";
  EXPECT_EQ((*store)->Rounds(0, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*store)->CheckIntegrity().ok());
}

TEST(StateStoreTest, TamperedGlobalFileIsDetected) {
  const std::string dir = FreshDir("tamper");
  auto store = StateStore::Open(dir);
  ASSERT_TRUE((*store)->OpenRound(1, "{}").ok());
  ASSERT_TRUE((*store)->CommitRound(1, Blob(1), "", "", {}).ok());
  std::ofstream(dir + "/global/round-1.safetensors", std::ios::binary | std::ios::app) << "x";
  auto latest = (*store)->LatestCommitted();
  EXPECT_EQ(latest.status().code(), absl::StatusCode::kDataLoss);
  std::filesystem::remove(dir + "/global/round-1.safetensors");
  EXPECT_EQ((*store)->LatestCommitted().status().code(), absl::StatusCode::kDataLoss);
}

TEST(StateStoreTest, ResidualsAreVersionedAndDeletable) {
  auto store = StateStore::Open(FreshDir("residuals"));
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(*(*store)->PutResidual("alice", Blob(1, 64), true), 1);
  EXPECT_EQ(*(*store)->PutResidual("alice", Blob(2, 64), true), 2);
  EXPECT_EQ(*(*store)->PutResidual("bob", Blob(3, 32), false), 1);
  EXPECT_EQ(*(*store)->GetResidual("alice"), Blob(2, 64));
  EXPECT_EQ(*(*store)->GetResidual("alice", 1), Blob(1, 64));
  EXPECT_EQ((*store)->GetResidual("alice", 7).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*(*store)->PutResidual("alice", Blob(4, 16), false), 3);
  auto rows = (*store)->ResidualSummaries();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].user_id, "alice");
  EXPECT_EQ((*rows)[0].versions, 3) << "every version counted";
  EXPECT_FALSE((*rows)[0].sealed) << "the latest version's sealing";
  EXPECT_EQ((*rows)[0].bytes, 16) << "the latest version's size";
  EXPECT_EQ((*rows)[1].user_id, "bob");
  EXPECT_EQ((*rows)[1].versions, 1);
  EXPECT_EQ((*rows)[1].bytes, 32);
  ASSERT_EQ((*store)->ResidualSummaries("", 1)->size(), 1u);
  EXPECT_EQ((*store)->ResidualSummaries("", 1)->at(0).user_id, "alice");
  ASSERT_EQ((*store)->ResidualSummaries("alice")->size(), 1u);
  EXPECT_EQ((*store)->ResidualSummaries("alice")->at(0).user_id, "bob") << "after the cursor only";
  EXPECT_TRUE((*store)->ResidualSummaries("bob")->empty());
  EXPECT_EQ((*store)->ResidualSummaries("", -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*(*store)->DeleteResidual("alice"), 3);
  EXPECT_EQ((*store)->GetResidual("alice").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE((*store)->PutResidual("", Blob(1), true).ok());
  ASSERT_TRUE((*store)->RecordJoin("partner-a", "ab12", {"alice"}).ok());
  ASSERT_TRUE((*store)->RecordJoin("partner-a", "cd34", {"alice", "amy"}).ok());
  auto clients = (*store)->Clients();
  ASSERT_EQ(clients->size(), 1u);
  EXPECT_EQ((*clients)[0].cert_fingerprint, "cd34");
  // A join that claims another client's user writes nothing.
  EXPECT_EQ((*store)->RecordJoin("partner-b", "ef56", {"bob", "alice"}).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*store)->Clients()->size(), 1u);
  auto users = (*store)->Users();
  ASSERT_TRUE(users.ok());
  ASSERT_EQ(users->size(), 2u);
  EXPECT_EQ((*users)[0].user_id, "alice");
  EXPECT_EQ((*users)[0].client_id, "partner-a");
  EXPECT_EQ((*users)[1].user_id, "amy");
  EXPECT_FALSE((*store)->RecordJoin("partner-a", "cd34", {""}).ok());
}

// Only the newest commit keeps its ledger snapshot; the global versions
// and their hashes all stay.
TEST(StateStoreTest, OnlyTheNewestCommitKeepsItsLedger) {
  const std::string dir = FreshDir("ledger-history");
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int r = 1; r <= 3; ++r) {
      ASSERT_TRUE((*store)->OpenRound(r, "{}").ok());
      ASSERT_TRUE((*store)->CommitRound(r, Blob(static_cast<uint8_t>(r)), "{}", absl::StrCat("{\"round\":", r, "}"), {}).ok());
    }
    auto latest = (*store)->LatestCommitted();
    ASSERT_TRUE(latest.ok() && latest->has_value());
    EXPECT_EQ((*latest)->ledger_json, "{\"round\":3}");
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir + "/state.sqlite3").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT round, ledger_json, length(sha256) FROM global_versions ORDER BY round", -1, &st, nullptr),
            SQLITE_OK);
  std::vector<std::string> ledgers;
  while (sqlite3_step(st) == SQLITE_ROW) {
    ledgers.push_back(reinterpret_cast<const char*>(sqlite3_column_text(st, 1)));
    EXPECT_EQ(sqlite3_column_int(st, 2), 64) << "round " << sqlite3_column_int(st, 0) << " keeps its hash";
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  EXPECT_EQ(ledgers, (std::vector<std::string>{"", "", "{\"round\":3}"}));
}

// A version 1 store (no users table) is upgraded in place; a store of a
// newer version is refused, naming both versions.
TEST(StateStoreTest, OlderSchemasAreUpgradedNewerRefused) {
  const std::string dir = FreshDir("schema");
  ASSERT_TRUE(StateStore::Open(dir).ok());
  auto exec = [&](const char* sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir + "/state.sqlite3").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    sqlite3_close(db);
  };
  exec("DROP TABLE users; UPDATE meta SET value = '1' WHERE key = 'schema_version'");
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->RecordJoin("partner-a", "", {"alice"}).ok());
    EXPECT_EQ((*store)->Users()->size(), 1u);
  }
  exec("UPDATE meta SET value = '3' WHERE key = 'schema_version'");
  auto newer = StateStore::Open(dir);
  ASSERT_FALSE(newer.ok());
  EXPECT_NE(newer.status().message().find("has schema version 3; this fedpers reads version 2"), absl::string_view::npos)
      << newer.status();
}

TEST(StateStoreTest, NotADatabaseIsAClearError) {
  const std::string dir = FreshDir("garbage");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/state.sqlite3") << "this is not sqlite, just text that is long enough to have a header..........";
  auto store = StateStore::Open(dir);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("state.sqlite3"), absl::string_view::npos) << store.status();
}

// A database damaged inside (a flipped page, as from a failing disk): the
// error is DataLoss and names the file.
TEST(StateStoreTest, DamagedPagesAreDataLossNamingTheFile) {
  const std::string dir = FreshDir("flipped");
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int round = 1; round <= 3; ++round) {
      ASSERT_TRUE((*store)->OpenRound(round, "{}").ok());
      ASSERT_TRUE((*store)->CommitRound(round, Blob(round), "{}", "{}", {}).ok());
    }
  }
  const std::string path = dir + "/state.sqlite3";
  const auto size = std::filesystem::file_size(path);
  ASSERT_GE(size, 3 * 4096u);
  {
    // Every table's page after the schema page: its b-tree header, garbled.
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    for (std::uintmax_t page = 1; page * 4096 < size; ++page) {
      f.seekp(static_cast<std::streamoff>(page * 4096));
      f.write("\x0d\xff\xff\xff\xff\xff\xff\xff", 8);
    }
  }
  absl::Status s = [&]() -> absl::Status {
    auto store = StateStore::Open(dir);
    if (!store.ok()) return store.status();
    if (absl::Status c = (*store)->CheckIntegrity(); !c.ok()) return c;
    return (*store)->LatestCommitted().status();
  }();
  ASSERT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  // (SQLite gives the path normalized: TempDir's trailing slash goes.)
  EXPECT_NE(s.message().find("state database '"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find(std::filesystem::path(dir).filename().string() + "/state.sqlite3'"),
            absl::string_view::npos)
      << s;
}

// An emptied (or deleted) database beside committed round files is refused:
// starting over would overwrite round 1's adapter and forget the ledger.
TEST(StateStoreTest, AnEmptiedDatabaseBesideRoundFilesIsRefused) {
  for (const bool remove : {false, true}) {
    SCOPED_TRACE(remove ? "deleted" : "emptied");
    const std::string dir = FreshDir(remove ? "deleted" : "emptied");
    {
      auto store = StateStore::Open(dir);
      ASSERT_TRUE(store.ok()) << store.status();
      ASSERT_TRUE((*store)->OpenRound(1, "{}").ok());
      ASSERT_TRUE((*store)->CommitRound(1, Blob(1), "{}", "{}", {}).ok());
    }
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(dir + "/state.sqlite3" + suffix);
    if (!remove) std::ofstream(dir + "/state.sqlite3").flush();
    const auto before = std::filesystem::last_write_time(dir + "/global/round-1.safetensors");
    auto store = StateStore::Open(dir);
    ASSERT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
    EXPECT_NE(store.status().message().find("holds 1 committed round file(s)"), absl::string_view::npos)
        << store.status();
    EXPECT_EQ(std::filesystem::last_write_time(dir + "/global/round-1.safetensors"), before);
    EXPECT_FALSE(StateStore::Open(dir).ok()) << "and again on the next start";
  }
  // A fresh directory, or one whose global/ holds no rounds, starts cleanly.
  const std::string dir = FreshDir("fresh_global");
  std::filesystem::create_directories(dir + "/global");
  EXPECT_TRUE(StateStore::Open(dir).ok());
}

// A database restored from a backup beside the files of rounds committed
// after it is refused: going on would forget their privacy cost and
// overwrite them. The file a crash leaves of a round that was open is not.
TEST(StateStoreTest, AnOlderDatabaseBesideNewerRoundFilesIsRefused) {
  const std::string dir = FreshDir("restored");
  const std::string backup = dir + "-backup.sqlite3";
  auto commit = [&](StateStore& store, int64_t round) {
    ASSERT_TRUE(store.OpenRound(round, "{}").ok());
    ASSERT_TRUE(store.CommitRound(round, Blob(static_cast<int>(round)), "{}", "{}", {}).ok());
  };
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    commit(**store, 1);
    commit(**store, 2);
  }
  std::filesystem::remove(backup);
  std::filesystem::copy_file(dir + "/state.sqlite3", backup);  // closed: the WAL is checkpointed
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    commit(**store, 3);
    commit(**store, 4);
  }
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(dir + "/state.sqlite3" + suffix);
  std::filesystem::copy_file(backup, dir + "/state.sqlite3");
  const auto before = std::filesystem::last_write_time(dir + "/global/round-4.safetensors");
  auto store = StateStore::Open(dir);
  ASSERT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_NE(
      store.status().message().find("holds the file of round 4, but the state database knows rounds up to 2"),
      absl::string_view::npos)
      << store.status();
  EXPECT_EQ(std::filesystem::last_write_time(dir + "/global/round-4.safetensors"), before);

  // A crash between writing round 3's file and committing it: the database
  // has round 3 open, and the store opens.
  const std::string crashed = FreshDir("crashed");
  {
    auto fresh = StateStore::Open(crashed);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    commit(**fresh, 1);
    ASSERT_TRUE((*fresh)->OpenRound(2, "{}").ok());
  }
  std::ofstream(crashed + "/global/round-2.safetensors") << "written before the commit";
  EXPECT_TRUE(StateStore::Open(crashed).ok());
}

// A table gone from a database that was written is damage, not a new store:
// creating it again would lose its rows without a word.
TEST(StateStoreTest, ALostTableIsDataLoss) {
  const std::string dir = FreshDir("lost_table");
  {
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->PutResidual("alice", Blob(1), true).ok());
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir + "/state.sqlite3").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "DROP TABLE residuals", nullptr, nullptr, nullptr), SQLITE_OK)
      << sqlite3_errmsg(db);
  sqlite3_close(db);
  auto store = StateStore::Open(dir);
  ASSERT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_NE(store.status().message().find("lacks its 'residuals' table"), absl::string_view::npos)
      << store.status();
}

// A child process commits rounds as fast as it can and reports each commit
// on a pipe; the parent kills it with SIGKILL at random moments, 10 times.
// After every kill the store opens, passes PRAGMA integrity_check, loses no
// reported commit and its latest global file matches its hash.
TEST(StateStoreTest, SigkillAtRandomPointsLosesNothingCommitted) {
  const std::string dir = FreshDir("sigkill");
  std::mt19937 gen(7);
  int64_t next_round = 1, last_reported = 0;
  for (int attempt = 0; attempt < 10; ++attempt) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      auto store = StateStore::Open(dir);
      if (!store.ok() || !(*store)->RecoverOpenRounds().ok()) _exit(2);
      for (int64_t r = next_round;; ++r) {
        if (!(*store)->OpenRound(r, "{}").ok()) _exit(3);
        if (!(*store)->CommitRound(r, Blob(static_cast<int>(r), 20000), "{}", "{}", Blob(1, 8)).ok()) _exit(4);
        if (write(fds[1], &r, sizeof(r)) != sizeof(r)) _exit(5);
      }
    }
    close(fds[1]);
    usleep(std::uniform_int_distribution<int>(20000, 150000)(gen));
    ::kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    int64_t r;
    while (read(fds[0], &r, sizeof(r)) == sizeof(r)) last_reported = r;
    close(fds[0]);
    auto store = StateStore::Open(dir);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->CheckIntegrity().ok());
    ASSERT_TRUE((*store)->RecoverOpenRounds().ok());
    auto latest = (*store)->LatestCommitted();
    ASSERT_TRUE(latest.ok()) << latest.status();
    if (last_reported > 0) {
      ASSERT_TRUE(latest->has_value());
      EXPECT_GE((*latest)->round, last_reported) << "a reported commit was lost (kill " << attempt << ")";
      EXPECT_EQ((*latest)->global_safetensors, Blob(static_cast<int>((*latest)->round), 20000));
    }
    auto rounds = (*store)->Rounds(1);
    next_round = rounds->empty() ? 1 : (*rounds)[0].round + 1;
  }
  EXPECT_GT(last_reported, 0) << "the child committed something";
}

}  // namespace
}  // namespace fedpers
