#include "simulations/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/build_identity.h"

namespace fedpers {
namespace {

// The paired comparison of two methods, by hand: gains {0.1, 0, 0.2} have
// mean 0.1, sample sd 0.1, standard error 0.1 / sqrt(3); two of three users
// are strictly better (a tie is not).
TEST(CompareUsersTest, PairsUsersAndGivesTheMeanGainWithItsStandardError) {
  auto user = [](const std::string& id, double accuracy) {
    UserResult u;
    u.user_id = id;
    u.accuracy = accuracy;
    return u;
  };
  const std::vector<UserResult> method = {user("a", 0.5), user("b", 0.6), user("c", 0.7)};
  const std::vector<UserResult> reference = {user("a", 0.4), user("b", 0.6), user("c", 0.5)};
  absl::StatusOr<PairedComparison> c = CompareUsers(method, reference);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NEAR(c->mean_gain, 0.1, 1e-15);
  EXPECT_NEAR(c->standard_error, 0.1 / std::sqrt(3.0), 1e-15);
  EXPECT_DOUBLE_EQ(c->share_better, 2.0 / 3.0);
  absl::StatusOr<PairedComparison> self = CompareUsers(method, method);
  EXPECT_EQ(self->mean_gain, 0);
  EXPECT_EQ(self->standard_error, 0);
  EXPECT_EQ(self->share_better, 0) << "ties are not improvements";
  absl::StatusOr<PairedComparison> one = CompareUsers({user("a", 0.3)}, {user("a", 0.2)});
  EXPECT_NEAR(one->mean_gain, 0.1, 1e-15);
  EXPECT_EQ(one->standard_error, 0) << "one user: no spread to estimate";
  EXPECT_EQ(CompareUsers(method, {reference[0]}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompareUsers({}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<UserResult> reordered = {reference[1], reference[0], reference[2]};
  absl::StatusOr<PairedComparison> mismatched = CompareUsers(method, reordered);
  ASSERT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatched.status().message().find("'a' in one method and 'b'"), std::string::npos)
      << mismatched.status();
}

// The results table and summary carry the comparison: the share and the
// gain with its standard error.
TEST(CompareUsersTest, TableAndSummaryShowTheGain) {
  ExperimentResult r;
  MethodResult global, personal;
  global.method = Method::kGlobal;
  personal.method = Method::kGlobalResidual;
  personal.over_global = PairedComparison{0.75, 0.0123, 0.0021};
  global.over_global = PairedComparison{0, 0, 0};
  r.methods = {global, personal};
  const std::string table = ResultsTable(r);
  EXPECT_NE(table.find("accuracy gain over global per user, mean (standard error):\n  global+residual  +0.0123 (0.0021)\n"),
            std::string::npos)
      << table;
  EXPECT_EQ(table.find("  global           "), std::string::npos) << "global is not compared with itself";
  const nlohmann::ordered_json j = MethodResultToJson(personal);
  EXPECT_EQ(j["improved_over_global"], 0.75);
  EXPECT_EQ(j["accuracy_gain_over_global"]["mean"], 0.0123);
  EXPECT_EQ(j["accuracy_gain_over_global"]["standard_error"], 0.0021);
  EXPECT_TRUE(j["accuracy_gain_over_base"].is_null()) << "base did not run";
}

// A finished method survives its record exactly: every double round-trips
// through JSON, optional fields stay absent or present.
TEST(MethodRecordTest, RoundTripsEveryField) {
  MethodResult m;
  m.method = Method::kGlobalResidual;
  m.final_eval = {2.123456789012345, 8.36188933669, 0.38944223450957766};
  m.bytes_up_per_client_round = 178948.30625;
  m.bytes_down_per_client_round = 300804.58333333331;
  m.client_seconds_per_round = 2.4052488494437503;
  m.coordinator_seconds_per_round = 0.014886787666666665;
  m.epsilon = 60024.125;
  m.epsilon_against_coordinator = std::numeric_limits<double>::infinity();
  m.rounds_committed = 23;
  m.rounds_aborted = 1;
  m.stopped = "stopped at round 5 of 30, which could not open (nor could any later one): over the budget";
  m.wall_seconds = 645.78692466;
  m.over_global = PairedComparison{0.55, 0.0125, 0.002};
  m.users = {{"alice", 1000, 250, 4, 2.0, 7.389, 0.41, 250}, {"bob \"the\" bard", 3, 1, 0, 3.5, 33.1, 0.1, 1}};
  RoundRecord evaluated;
  evaluated.method = Method::kGlobalResidual;
  evaluated.round = 4;
  evaluated.sampled = 20;
  evaluated.contributors = 19;
  evaluated.ring_bits = 19;
  evaluated.bytes_up_per_client = 178000.5;
  evaluated.epsilon = 0.1 + 0.2;
  evaluated.epsilon_against_coordinator = 1.0 / 3;
  evaluated.eval = EvalSummary{2.1, 8.2, 0.3876};
  RoundRecord aborted;
  aborted.method = Method::kGlobalResidual;
  aborted.round = 5;
  aborted.committed = false;
  aborted.abort_reason = "fewer than 10 survivors";
  aborted.epsilon = std::numeric_limits<double>::infinity();  // after a round without noise
  aborted.epsilon_against_coordinator = std::nullopt;
  MethodResult back;
  std::vector<RoundRecord> rounds;
  const nlohmann::json text = nlohmann::json::parse(MethodRecordJson(m, {evaluated, aborted}).dump(1));
  ASSERT_TRUE(MethodRecordFromJson(text, back, rounds).ok());
  EXPECT_EQ(back.method, m.method);
  EXPECT_EQ(back.final_eval.loss, m.final_eval.loss);
  EXPECT_EQ(back.final_eval.perplexity, m.final_eval.perplexity);
  EXPECT_EQ(back.final_eval.accuracy, m.final_eval.accuracy);
  EXPECT_EQ(back.bytes_down_per_client_round, m.bytes_down_per_client_round);
  EXPECT_EQ(back.coordinator_seconds_per_round, m.coordinator_seconds_per_round);
  EXPECT_EQ(back.epsilon, m.epsilon);
  EXPECT_EQ(back.epsilon_against_coordinator, m.epsilon_against_coordinator) << "inf, written as \"inf\"";
  EXPECT_EQ(back.rounds_committed, 23);
  EXPECT_EQ(back.rounds_aborted, 1);
  EXPECT_EQ(back.stopped, m.stopped);
  EXPECT_EQ(back.wall_seconds, m.wall_seconds);
  EXPECT_FALSE(back.over_global.has_value()) << "depends on the other methods: recomputed, not stored";
  ASSERT_EQ(back.users.size(), 2u);
  EXPECT_EQ(back.users[1].user_id, "bob \"the\" bard");
  EXPECT_EQ(back.users[0].participations, 4);
  EXPECT_EQ(back.users[0].eval_tokens, 250);
  EXPECT_EQ(back.users[1].accuracy, 0.1);
  ASSERT_EQ(rounds.size(), 2u);
  EXPECT_EQ(rounds[0].ring_bits, 19);
  EXPECT_EQ(rounds[0].epsilon, 0.1 + 0.2);
  EXPECT_EQ(rounds[0].epsilon_against_coordinator, 1.0 / 3);
  EXPECT_EQ(rounds[1].epsilon_against_coordinator, std::nullopt);
  EXPECT_EQ(rounds[1].epsilon, std::numeric_limits<double>::infinity()) << "written as \"inf\"";
  ASSERT_TRUE(rounds[0].eval.has_value());
  EXPECT_EQ(rounds[0].eval->accuracy, 0.3876);
  EXPECT_FALSE(rounds[1].committed);
  EXPECT_EQ(rounds[1].abort_reason, "fewer than 10 survivors");
  EXPECT_EQ(rounds[1].ring_bits, 0);
  EXPECT_FALSE(rounds[1].eval.has_value());
}

TEST(MethodRecordTest, DamagedRecordsAreDataLossAndChangeNothing) {
  MethodResult m;
  m.method = Method::kLocal;
  m.users = {{"alice", 1, 1, 1, 1, 1, 1, 1}};
  nlohmann::json good = nlohmann::json::parse(MethodRecordJson(m, {}).dump());
  MethodResult out;
  out.wall_seconds = 7;
  std::vector<RoundRecord> rounds(3);
  auto expect_data_loss = [&](nlohmann::json bad, const std::string& why) {
    absl::Status s = MethodRecordFromJson(bad, out, rounds);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << why << ": " << s;
    EXPECT_EQ(out.wall_seconds, 7) << why;
    EXPECT_EQ(rounds.size(), 3u) << why;
  };
  nlohmann::json bad = good;
  bad.erase("accuracy");
  expect_data_loss(bad, "missing field");
  bad = good;
  bad["method"] = "magic";
  expect_data_loss(bad, "unknown method");
  bad = good;
  bad["users"][0]["accuracy"] = "high";
  expect_data_loss(bad, "wrong type");
  bad = good;
  RoundRecord other;
  other.method = Method::kGlobal;
  bad["rounds"] = nlohmann::json::parse(MethodRecordJson(m, {other}).dump())["rounds"];
  expect_data_loss(bad, "a round of another method");
  bad = good;
  bad["epsilon_against_coordinator"] = "lots";
  expect_data_loss(bad, "an epsilon that is not a number, \"inf\" or null");
  bad = good;
  bad["epsilon"] = nullptr;
  expect_data_loss(bad, "the ledger's epsilon is always known");
  expect_data_loss(nlohmann::json::array(), "not an object");
  bad = good;
  bad.erase("epsilon_against_coordinator");
  EXPECT_TRUE(MethodRecordFromJson(bad, out, rounds).ok()) << "records from before the field";
  EXPECT_EQ(out.epsilon_against_coordinator, std::nullopt);
}

TEST(FinishedRecordTest, ReusedOnlyByThisBuildWithTheSameInputs) {
  ASSERT_EQ(ExecutableDigest().size(), 64u) << "the test binary can read itself";
  const std::string dir = (std::filesystem::path(testing::TempDir()) / "finished_record").string();
  std::filesystem::remove_all(dir);
  const std::string path = dir + "/r.json";
  const nlohmann::json identity = RecordIdentity({{"config", {{"rounds", 3}}}, {"users", {"a", "b"}}});
  EXPECT_TRUE(absl::IsNotFound(ReadFinishedRecord(path, identity).status()));
  ASSERT_TRUE(WriteFinishedRecord(path, identity, {{"accuracy", 0.5}}).ok());
  absl::StatusOr<nlohmann::json> back = ReadFinishedRecord(path, identity);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)["accuracy"], 0.5);
  // Other inputs.
  absl::Status s = ReadFinishedRecord(path, RecordIdentity({{"config", {{"rounds", 4}}}, {"users", {"a", "b"}}})).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("other inputs"), absl::string_view::npos) << s;
  // Another build.
  nlohmann::json other_build = identity;
  other_build["build"] = std::string(64, '0');
  ASSERT_TRUE(WriteFinishedRecord(path, other_build, {{"accuracy", 0.5}}).ok());
  s = ReadFinishedRecord(path, identity).status();
  EXPECT_NE(s.message().find("another build"), absl::string_view::npos) << s;
  // Damaged.
  std::ofstream(path) << "{\"identity\": ";
  s = ReadFinishedRecord(path, identity).status();
  EXPECT_NE(s.message().find("not a record"), absl::string_view::npos) << s;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace fedpers
