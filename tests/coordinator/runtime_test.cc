#include "coordinator/runtime.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/safetensors.h"
#include "nlohmann/json.hpp"
#include "secure_agg/dp_mechanisms.h"
#include "secure_agg/secagg_client.h"

namespace fedpers {
namespace {

using namespace fedpers::v1;

FlatLayout Layout() { return *FlatLayout::Create({{"a.lora_B_global", {12, 4}}}); }

// A simulated partner client hosting some users: polls, answers invitations
// with a fixed update through the real pipeline, uploads SecAgg messages.
struct FakeClient {
  FakeClient(std::string id, std::vector<std::string> u) : identity(std::move(id)), users(std::move(u)) {}
  std::string identity;
  std::vector<std::string> users;
  std::map<std::string, std::optional<secagg::SecAggClient>> sessions;
  std::map<std::string, int64_t> round_of;
  std::set<std::string> silent;  // users that stop answering
  std::set<std::string> dead;    // users whose client stopped polling for them
  std::map<std::string, RoundFinished> finished;
  dp::RandomSource rng = dp::RandomSource::FromTestSeed(3);

  void Step(CoordinatorRuntime& rt) {
    for (const std::string& user : users) {
      if (dead.count(user)) continue;
      absl::StatusOr<PollResponse> p = rt.Poll(identity, user);
      ASSERT_TRUE(p.ok()) << p.status();
      if (silent.count(user)) continue;
      if (p->has_invitation()) {
        const RoundInvitation& inv = p->invitation();
        // Each delivered invitation carries the round's global adapter (the
        // runtime keeps one copy and attaches it at delivery).
        absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(inv.global_adapter());
        ASSERT_TRUE(file.ok()) << file.status();
        absl::StatusOr<std::vector<float>> global = Layout().FromSafetensors(*file);
        ASSERT_TRUE(global.ok()) << global.status();
        EXPECT_EQ(*global, rt.GlobalAdapter());
        std::vector<float> update(48, 0.01f * static_cast<float>(user.size()));
        auto enc = dp::PrivatizeForSecAgg(update, *dp::RingFromProto(inv.ring()), *dp::DpFromProto(inv.dp()), rng);
        ASSERT_TRUE(enc.ok());
        sessions[user].emplace(*secagg::SecAggClient::Create(inv.secagg(), inv.secagg_id(), *enc));
        round_of[user] = inv.round();
        Send(rt, user, *sessions[user]->Start());
      } else if (p->has_secagg()) {
        auto reply = sessions[user]->Handle(p->secagg());
        ASSERT_TRUE(reply.ok()) << reply.status();
        Send(rt, user, *reply);
      } else if (p->has_finished()) {
        finished[user] = p->finished();
      }
    }
  }
  void Send(CoordinatorRuntime& rt, const std::string& user, const SecAggClientMessage& m) {
    SecAggUpload up;
    up.set_user_id(user);
    up.set_round(round_of[user]);
    *up.mutable_message() = m;
    ASSERT_TRUE(rt.Upload(identity, up).ok());
  }
};

struct Fixture {
  std::string dir;
  std::unique_ptr<StateStore> store;
  std::unique_ptr<CoordinatorRuntime> rt;
  int64_t clock = 0;
  explicit Fixture(const std::string& name, RuntimeSettings settings) {
    dir = ::testing::TempDir() + "/runtime_" + name + "_" + std::to_string(::getpid());
    std::filesystem::remove_all(dir);
    store = std::move(*StateStore::Open(dir));
    rt = std::move(*CoordinatorRuntime::Create(store.get(), Layout(), settings, [this] { return clock; }));
  }
};

// A coordinator restart: the runtime and the store are closed and opened
// again from the state directory.
void Restart(Fixture& f, const RuntimeSettings& settings) {
  f.rt.reset();
  f.store.reset();
  f.store = std::move(*StateStore::Open(f.dir));
  f.rt = std::move(*CoordinatorRuntime::Create(f.store.get(), Layout(), settings, [&f] { return f.clock; }));
}

JoinRequest JoinFor(const std::vector<std::string>& users) {
  JoinRequest j;
  for (const auto& u : users) j.add_user_ids(u);
  j.set_layout_fingerprint(Layout().Fingerprint());
  return j;
}

TEST(RuntimeTest, PollingClientsCompleteRoundsAndStragglersTimeOut) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 5;
  settings.round.min_clients = 3;
  settings.round.threshold = 3;
  settings.stage_timeout_ms = 1000;
  settings.max_rounds = 2;
  Fixture f("rounds", settings);
  FakeClient a("partner-a", {"alice", "amy", "ann"}), b("partner-b", {"bob", "bea"});
  ASSERT_TRUE(f.rt->Join(a.identity, JoinFor(a.users)).ok());
  ASSERT_TRUE(f.rt->Join(b.identity, JoinFor(b.users)).ok());
  b.silent.insert("bea");  // a straggler that never answers
  int ticks = 0;
  while (!f.rt->finished() && ticks < 200) {
    ASSERT_TRUE(f.rt->Tick().ok());
    a.Step(*f.rt);
    b.Step(*f.rt);
    f.clock += 100;
    ++ticks;
  }
  ASSERT_TRUE(f.rt->finished()) << "two rounds commit despite the straggler";
  StatusResponse status = f.rt->AdminStatus();
  EXPECT_EQ(status.last_committed_round(), 2);
  EXPECT_EQ(status.stage(), "idle");
  EXPECT_TRUE(a.finished.at("alice").committed());
  auto rounds = f.rt->AdminRounds(10);
  ASSERT_EQ(rounds->rounds_size(), 2);
  EXPECT_EQ(rounds->rounds(0).state(), "committed");
  EXPECT_EQ(rounds->total_rounds(), 2);
  auto newest = f.rt->AdminRounds(1);
  ASSERT_EQ(newest->rounds_size(), 1);
  EXPECT_EQ(newest->rounds(0).round(), 2);
  EXPECT_EQ(newest->total_rounds(), 2) << "the total tells the admin CLI how many it did not show";
  EXPECT_EQ(f.rt->AdminRounds(0)->rounds_size(), 2) << "0: what a page holds";
  EXPECT_EQ(f.rt->AdminRounds(-1).status().code(), absl::StatusCode::kInvalidArgument);
  auto clients = f.rt->AdminClients();
  EXPECT_EQ(clients->clients_size(), 2);
}

// Listings come in pages bounded in bytes: walking them from cursor to
// cursor gives every row once, in order, whatever the page size, and a
// limit counts across pages.
TEST(RuntimeTest, AdminListingsComeInPages) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 2;
  settings.round.min_clients = 2;
  Fixture f("pages", settings);
  // 25 rounds of varied sizes (a long reason, like a round row with many
  // contributors), recorded before the runtime opens the store.
  for (int64_t round = 1; round <= 25; ++round) {
    ASSERT_TRUE(f.store->OpenRound(round, "{}").ok());
    ASSERT_TRUE(f.store->AbortRound(round, std::string(round % 7 == 0 ? 900 : 10, 'x')).ok());
  }
  // Users bound to a client, some with residuals, and two with residuals
  // only (unbound: an older store), one sorting between bound users.
  std::vector<std::string> bound;
  for (int i = 0; i < 30; ++i) bound.push_back(absl::StrFormat("user%02d", i));
  bound.push_back("zz0");  // bound users after every user with residuals only
  bound.push_back("zz1");
  ASSERT_TRUE(f.store->RecordJoin("partner-a", "ab12", bound).ok());
  for (int i = 0; i < 30; i += 3) ASSERT_TRUE(f.store->PutResidual(bound[i], std::vector<uint8_t>(10 + i), true).ok());
  ASSERT_TRUE(f.store->PutResidual("user05a", std::vector<uint8_t>(7), false).ok());
  ASSERT_TRUE(f.store->PutResidual("zed", std::vector<uint8_t>(8), true).ok());
  Restart(f, settings);

  for (int64_t page_bytes : {int64_t{1} << 20, int64_t{400}, int64_t{1}}) {
    SCOPED_TRACE(page_bytes);
    settings.admin_page_bytes = page_bytes;
    Restart(f, settings);
    std::vector<int64_t> seen;
    int64_t before = 0;
    int pages = 0;
    do {
      absl::StatusOr<RoundsResponse> page = f.rt->AdminRounds(0, before);
      ASSERT_TRUE(page.ok()) << page.status();
      ASSERT_GT(page->rounds_size(), 0);
      EXPECT_EQ(page->total_rounds(), 25);
      if (page->rounds_size() > 1) {
        EXPECT_LE(page->ByteSizeLong(), static_cast<size_t>(page_bytes) + 16) << "only a lone row may exceed it";
      }
      for (const RoundInfo& r : page->rounds()) seen.push_back(r.round());
      before = page->next_before_round();
      ++pages;
    } while (before > 0 && pages < 100);
    std::vector<int64_t> all(25);
    for (int i = 0; i < 25; ++i) all[i] = 25 - i;
    EXPECT_EQ(seen, all);
    if (page_bytes == 1) { EXPECT_EQ(pages, 25) << "one row per page when none fits"; }
    if (page_bytes == (int64_t{1} << 20)) { EXPECT_EQ(pages, 1); }
    if (page_bytes == 400) {
      // A limit the page bound cuts short: the cursor is the last row given.
      absl::StatusOr<RoundsResponse> cut = f.rt->AdminRounds(20, 0);
      ASSERT_TRUE(cut.ok());
      ASSERT_LT(cut->rounds_size(), 20);
      EXPECT_EQ(cut->next_before_round(), cut->rounds(cut->rounds_size() - 1).round());
    }
  }
  settings.admin_page_bytes = int64_t{1} << 20;
  Restart(f, settings);
  absl::StatusOr<RoundsResponse> some = f.rt->AdminRounds(3, 20);
  ASSERT_EQ(some->rounds_size(), 3);
  EXPECT_EQ(some->rounds(0).round(), 19);
  EXPECT_EQ(some->next_before_round(), 17) << "rounds 16 and older follow";
  absl::StatusOr<RoundsResponse> last = f.rt->AdminRounds(3, 3);
  ASSERT_EQ(last->rounds_size(), 2);
  EXPECT_EQ(last->next_before_round(), 0) << "nothing older than round 1";
  EXPECT_EQ(f.rt->AdminRounds(1, 2)->next_before_round(), 0) << "round 1 was the last";
  EXPECT_EQ(f.rt->AdminRounds(0, -1).status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<std::string> expected = bound;
  expected.push_back("user05a");
  expected.push_back("zed");
  std::sort(expected.begin(), expected.end());
  for (int64_t page_bytes : {int64_t{1} << 20, int64_t{150}, int64_t{1}}) {
    settings.admin_page_bytes = page_bytes;
    Restart(f, settings);
    for (int limit : {0, 4}) {
      SCOPED_TRACE(absl::StrCat(page_bytes, " bytes, limit ", limit));
      std::vector<std::string> seen;
      std::string after;
      int pages = 0;
      do {
        absl::StatusOr<UsersResponse> page = f.rt->AdminUsers(limit, after);
        ASSERT_TRUE(page.ok()) << page.status();
        ASSERT_GT(page->users_size(), 0);
        if (limit > 0) { EXPECT_LE(page->users_size(), limit); }
        for (const UserInfo& u : page->users()) {
          seen.push_back(u.user_id());
          const bool orphan = u.user_id() == "user05a" || u.user_id() == "zed";
          EXPECT_EQ(u.client_id(), orphan ? "" : "partner-a") << u.user_id();
          if (u.user_id() == "user03") {
            EXPECT_EQ(u.residual_versions(), 1);
            EXPECT_EQ(u.bytes(), 13);
            EXPECT_TRUE(u.sealed());
          }
          if (u.user_id() == "user05a") { EXPECT_FALSE(u.sealed()); }
          if (u.user_id() == "user04") { EXPECT_EQ(u.residual_versions(), 0); }
        }
        after = page->next_after_user_id();
        ++pages;
      } while (!after.empty() && pages < 100);
      EXPECT_EQ(seen, expected);
      if (page_bytes == 1) { EXPECT_EQ(pages, 34); }
    }
  }
  // Only bound users after the cursor, exactly `limit` of them: the page
  // holds them all and says none follow; with one fewer, that one follows.
  settings.admin_page_bytes = int64_t{1} << 20;
  Restart(f, settings);
  absl::StatusOr<UsersResponse> tail = f.rt->AdminUsers(2, "zed");
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->users_size(), 2);
  EXPECT_EQ(tail->users(1).user_id(), "zz1");
  EXPECT_EQ(tail->next_after_user_id(), "") << "none follow";
  absl::StatusOr<UsersResponse> short_tail = f.rt->AdminUsers(1, "zed");
  ASSERT_EQ(short_tail->users_size(), 1);
  EXPECT_EQ(short_tail->next_after_user_id(), "zz0") << "zz1 follows";
  EXPECT_EQ(f.rt->AdminUsers(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(f.rt->AdminUsers(0, "zz1")->users().empty());
}

TEST(RuntimeTest, CrashedClientsAreNoLongerSampled) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 10;  // everyone eligible is sampled
  settings.round.min_clients = 2;
  settings.round.threshold = 2;
  settings.stage_timeout_ms = 1000;
  settings.liveness_timeout_ms = 5000;
  settings.round_interval_ms = 6000;  // longer than the liveness window
  settings.max_rounds = 3;
  Fixture f("liveness", settings);
  FakeClient a("partner-a", {"alice", "amy"}), b("partner-b", {"bob"}), c("partner-c", {"cid"});
  for (FakeClient* x : {&a, &b, &c}) ASSERT_TRUE(f.rt->Join(x->identity, JoinFor(x->users)).ok());
  // bob's client dies after joining: round 1 samples him, he misses the keys
  // deadline, and no later round samples him. cid's client stays idle-alive
  // through round 1, then dies between rounds: by the time round 2 opens he
  // has been silent for longer than the liveness window.
  b.dead.insert("bob");
  int ticks = 0;
  while (!f.rt->finished() && ticks < 1000) {
    absl::StatusOr<CoordinatorRuntime::TickResult> t = f.rt->Tick();
    ASSERT_TRUE(t.ok()) << t.status();
    if (t->committed && t->committed->round == 1) c.dead.insert("cid");
    for (FakeClient* x : {&a, &b, &c}) x->Step(*f.rt);
    f.clock += 100;
    ++ticks;
  }
  ASSERT_TRUE(f.rt->finished());
  absl::StatusOr<RoundsResponse> rounds = f.rt->AdminRounds(10);
  ASSERT_TRUE(rounds.ok());
  ASSERT_EQ(rounds->rounds_size(), 3);
  std::map<int64_t, nlohmann::json> metrics;
  for (const RoundInfo& r : rounds->rounds()) {
    EXPECT_EQ(r.state(), "committed") << r.round() << ": " << r.abort_reason();
    metrics[r.round()] = nlohmann::json::parse(r.metrics_json());
  }
  EXPECT_EQ(metrics[1]["sampled"], 4);
  EXPECT_EQ(metrics[1]["contributors"], nlohmann::json({"alice", "amy", "cid"}));
  for (int64_t round : {2, 3}) {
    EXPECT_EQ(metrics[round]["sampled"], 2) << "round " << round << " samples only the live users";
    EXPECT_EQ(metrics[round]["contributors"], nlohmann::json({"alice", "amy"}));
  }
}

TEST(RuntimeTest, UsersBelongToTheirClient) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 3;
  settings.round.min_clients = 2;
  Fixture f("owners", settings);
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice"})).ok());
  EXPECT_EQ(f.rt->Join("partner-b", JoinFor({"alice"})).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->Poll("partner-b", "alice").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->Poll("partner-a", "nobody").status().code(), absl::StatusCode::kFailedPrecondition);
  // An id a terminal would act on is refused before it is stored or echoed.
  absl::StatusOr<JoinResponse> escape = f.rt->Join("partner-c", JoinFor({"carol", "eve\x1b]0;pwned\x07"}));
  EXPECT_EQ(escape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(escape.status().message().find("join: user id 2"), std::string::npos)
      << escape.status().message();
  EXPECT_TRUE(f.rt->Join("partner-d", JoinFor({"carol"})).ok()) << "a refused join binds none of its users";
  JoinRequest wrong = JoinFor({"carol"});
  wrong.set_layout_fingerprint(1);
  EXPECT_EQ(f.rt->Join("partner-c", wrong).status().code(), absl::StatusCode::kFailedPrecondition);
  // Residuals: only the owner reads, writes or deletes them.
  std::vector<uint8_t> blob = {1, 2, 3};
  EXPECT_EQ(*f.rt->PutResidual("partner-a", "alice", blob, true), 1);
  EXPECT_FALSE(f.rt->GetResidual("partner-b", "alice", 0).ok());
  EXPECT_EQ(*f.rt->GetResidual("partner-a", "alice", 0), blob);
  EXPECT_FALSE(f.rt->DeleteResidual("partner-b", "alice").ok());
  EXPECT_EQ(*f.rt->DeleteResidual("partner-a", "alice"), 1);
  SecAggUpload up;
  up.set_user_id("alice");
  up.set_round(1);
  EXPECT_EQ(f.rt->Upload("partner-a", up).code(), absl::StatusCode::kFailedPrecondition) << "no round running";
}

// The binding of users to clients is stored: a restarted coordinator still
// refuses another client's claim on a user and its residuals (which the
// store kept), lets the owner fetch them before it joins, and asks it to
// join again before it takes part.
TEST(RuntimeTest, OwnershipOutlivesARestart) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 2;
  settings.round.min_clients = 2;
  Fixture f("restart", settings);
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice", "amy"}), "a1b2").ok());
  std::vector<uint8_t> blob = {4, 5, 6};
  ASSERT_EQ(*f.rt->PutResidual("partner-a", "alice", blob, true), 1);

  Restart(f, settings);
  EXPECT_EQ(f.rt->Join("partner-b", JoinFor({"alice"})).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->Join("partner-b", JoinFor({"bob", "amy"})).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->GetResidual("partner-b", "alice", 0).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->DeleteResidual("partner-b", "alice").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*f.rt->GetResidual("partner-a", "alice", 0), blob);
  EXPECT_EQ(f.rt->GetResidual("partner-a", "nobody", 0).status().code(), absl::StatusCode::kFailedPrecondition);
  // Known but not joined since the restart: join again, then poll.
  EXPECT_EQ(f.rt->Poll("partner-a", "alice").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(f.rt->AdminStatus().connected_clients(), 0);
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice"}), "a1b2").ok());
  EXPECT_TRUE(f.rt->Poll("partner-a", "alice").ok());
  EXPECT_EQ(f.rt->AdminStatus().connected_clients(), 1);
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 1) << "amy has not joined since the restart";
  // A refused join bound none of its users: bob is still free.
  ASSERT_TRUE(f.rt->Join("partner-c", JoinFor({"bob"})).ok());
  absl::StatusOr<UsersResponse> users = f.rt->AdminUsers();
  ASSERT_TRUE(users.ok()) << users.status();
  std::map<std::string, std::string> owners;
  for (const UserInfo& u : users->users()) owners[u.user_id()] = u.client_id();
  EXPECT_EQ(owners, (std::map<std::string, std::string>{{"alice", "partner-a"}, {"amy", "partner-a"}, {"bob", "partner-c"}}));
  absl::StatusOr<ClientsResponse> clients = f.rt->AdminClients();
  ASSERT_TRUE(clients.ok());
  ASSERT_EQ(clients->clients_size(), 2);
  EXPECT_EQ(clients->clients(0).cert_fingerprint(), "a1b2");

  // An admin moves a user to another client, with its residuals; the old
  // client is refused, the new one joins before it takes part.
  EXPECT_EQ(f.rt->AdminMoveUser("nobody", "partner-b").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(f.rt->AdminMoveUser("alice", "").status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<MoveUserResponse> moved = f.rt->AdminMoveUser("alice", "partner-b");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->previous_client_id(), "partner-a");
  EXPECT_EQ(f.rt->Poll("partner-a", "alice").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->Join("partner-a", JoinFor({"alice"})).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->Poll("partner-b", "alice").status().code(), absl::StatusCode::kFailedPrecondition) << "join first";
  EXPECT_EQ(*f.rt->GetResidual("partner-b", "alice", 0), blob);
  EXPECT_EQ(f.rt->GetResidual("partner-a", "alice", 0).status().code(), absl::StatusCode::kPermissionDenied);
  // The move is stored.
  Restart(f, settings);
  EXPECT_EQ(f.rt->Join("partner-a", JoinFor({"alice"})).status().code(), absl::StatusCode::kPermissionDenied);
  // Not while the user takes part in a round.
  ASSERT_TRUE(f.rt->Join("partner-b", JoinFor({"alice"})).ok());
  ASSERT_TRUE(f.rt->Join("partner-c", JoinFor({"bob"})).ok());
  absl::StatusOr<CoordinatorRuntime::TickResult> tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok() && tick->opened) << "alice and bob make a round";
  absl::Status busy = f.rt->AdminMoveUser("bob", "partner-a").status();
  EXPECT_EQ(busy.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(busy.message().find("takes part in round"), absl::string_view::npos) << busy;
  // Once the round has ended, a user whose client is gone for good (it never
  // polls the notice of how the round ended) can be moved: the notice is
  // dropped, and the new client does not get it.
  f.clock += settings.stage_timeout_ms + 1;
  tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok() && tick->aborted) << "nobody answered";
  moved = f.rt->AdminMoveUser("bob", "partner-a");
  ASSERT_TRUE(moved.ok()) << moved.status();
  EXPECT_EQ(moved->previous_client_id(), "partner-c");
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"bob"})).ok());
  absl::StatusOr<PollResponse> after = f.rt->Poll("partner-a", "bob");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_FALSE(after->has_finished()) << "the old client's notice stays with it";
}

// A client that stops says so: its users are not sampled until they join
// again, and only their own client can make them leave.
TEST(RuntimeTest, UsersThatLeaveAreNotSampled) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 5;
  settings.round.min_clients = 2;
  settings.round.threshold = 2;
  Fixture f("leave", settings);
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice", "amy"})).ok());
  ASSERT_TRUE(f.rt->Join("partner-b", JoinFor({"bob"})).ok());
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 3);
  LeaveRequest theirs;
  theirs.add_user_ids("amy");
  theirs.add_user_ids("bob");
  EXPECT_EQ(f.rt->Leave("partner-a", theirs).code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 3) << "a refused leave changes nothing";
  LeaveRequest mine;
  mine.add_user_ids("amy");
  mine.add_user_ids("alice");
  ASSERT_TRUE(f.rt->Leave("partner-a", mine).ok());
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 1);
  EXPECT_EQ(f.rt->Poll("partner-a", "amy").status().code(), absl::StatusCode::kFailedPrecondition)
      << "join again";
  absl::StatusOr<CoordinatorRuntime::TickResult> tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok());
  EXPECT_FALSE(tick->opened) << "bob alone is fewer than min_clients";
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice"})).ok());
  tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok() && tick->opened) << "alice is back";
}

// A round the ledger refuses is not asked for at every tick: the refusal
// stands, once reported, until the eligible users change or
// kRetryRefusedOpenMs passes, and the admin status says why.
TEST(RuntimeTest, ARefusedRoundIsRetriedWhenTheUsersChange) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 5;
  settings.round.min_clients = 2;
  settings.round.threshold = 2;
  settings.round.noise_multiplier = 1;
  settings.round.epsilon_budget = 0.01;  // below any round
  Fixture f("refused", settings);
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice"})).ok());
  absl::StatusOr<CoordinatorRuntime::TickResult> tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok());
  EXPECT_FALSE(tick->opened || tick->refused) << "one user: no round is tried";
  EXPECT_EQ(f.rt->AdminStatus().open_refused(), "");
  EXPECT_EQ(f.rt->AdminStatus().min_clients(), 2);

  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice", "amy"})).ok());
  tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok());
  ASSERT_TRUE(tick->refused.has_value());
  EXPECT_FALSE(tick->opened || tick->aborted || tick->refusal_repeated);
  EXPECT_NE(tick->refused->find("over the budget"), std::string::npos) << *tick->refused;
  EXPECT_EQ(f.rt->AdminStatus().open_refused(), *tick->refused);
  EXPECT_EQ(f.rt->AdminStatus().stage(), "idle");

  // The same users, soon after: not asked again.
  f.clock += 100;
  tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok());
  EXPECT_FALSE(tick->refused || tick->opened);
  EXPECT_NE(f.rt->AdminStatus().open_refused(), "") << "the refusal stands";
  // Later: asked again, refused for the same reason.
  f.clock += CoordinatorRuntime::kRetryRefusedOpenMs;
  tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok() && tick->refused);
  EXPECT_TRUE(tick->refusal_repeated);
  // Another user becomes eligible: asked again at once.
  f.clock += 100;
  ASSERT_TRUE(f.rt->Join("partner-b", JoinFor({"bob"})).ok());
  tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok());
  EXPECT_TRUE(tick->refused.has_value());
}

TEST(RuntimeTest, PlainRoundsSampleOnlyUsersWhoseClientAllowsThem) {
  RuntimeSettings settings;
  settings.round.clients_per_round = 5;
  settings.round.min_clients = 2;
  settings.round.secure_aggregation = false;
  Fixture f("plain_consent", settings);
  JoinRequest willing = JoinFor({"alice", "amy"});
  willing.set_allows_plain_aggregation(true);
  ASSERT_TRUE(f.rt->Join("partner-a", willing).ok());
  ASSERT_TRUE(f.rt->Join("partner-b", JoinFor({"bob", "bea"})).ok());
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 2);
  auto tick = f.rt->Tick();
  ASSERT_TRUE(tick.ok() && tick->opened);
  for (const std::string user : {"alice", "amy"}) {
    auto p = f.rt->Poll("partner-a", user);
    ASSERT_TRUE(p.ok() && p->has_invitation()) << user;
    EXPECT_EQ(p->invitation().aggregation(), AGGREGATION_PLAIN);
  }
  for (const std::string user : {"bob", "bea"}) {
    auto p = f.rt->Poll("partner-b", user);
    ASSERT_TRUE(p.ok());
    EXPECT_FALSE(p->has_invitation()) << user << " did not allow plain rounds";
  }
  // Consent follows the latest join: granted, then withdrawn.
  JoinRequest b_willing = JoinFor({"bob", "bea"});
  b_willing.set_allows_plain_aggregation(true);
  ASSERT_TRUE(f.rt->Join("partner-b", b_willing).ok());
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 4);
  ASSERT_TRUE(f.rt->Join("partner-a", JoinFor({"alice"})).ok());
  EXPECT_EQ(f.rt->AdminStatus().eligible_users(), 3);
}

}  // namespace
}  // namespace fedpers
