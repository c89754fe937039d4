#include "coordinator/serve_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

namespace fedpers {
namespace {

// A config directory holding a small base model's config.json (all the
// serve config reads of the base).
std::string ConfigDir() {
  const std::string dir = ::testing::TempDir() + "/serve_config_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir + "/base");
  std::ofstream(dir + "/base/config.json")
      << R"({"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 32, "vocab_size": 259, "fedpers_tokenizer": "byte"})";
  return dir;
}

std::string Config(const std::string& round, const std::string& extra = "") {
  return R"({"base": "base", "insecure": true, "round": )" + round + (extra.empty() ? "" : ", " + extra) + "}";
}

TEST(ServeConfigTest, ReadsAValidConfigRelativeToItsDirectory) {
  const std::string dir = ConfigDir();
  absl::StatusOr<ServeConfig> c = ParseServeConfig(
      Config(R"({"clients_per_round": 6, "min_clients": 4, "clip_norm": 0.5, "noise_multiplier": 1.0, "seed": 7})",
             R"("state_dir": "state", "max_rounds": 3, "stage_timeout_ms": 5000.0, "admin_page_bytes": 4096)"),
      dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->state_dir, dir + "/state");
  EXPECT_EQ(c->runtime.round.clients_per_round, 6);
  EXPECT_EQ(c->runtime.round.min_clients, 4);
  EXPECT_EQ(c->runtime.round.clip_norm, 0.5);
  EXPECT_EQ(c->runtime.round.seed, 7u);
  EXPECT_EQ(c->runtime.max_rounds, 3);
  EXPECT_EQ(c->runtime.stage_timeout_ms, 5000);
  EXPECT_EQ(c->runtime.admin_page_bytes, 4096);
  EXPECT_TRUE(c->serve.insecure);
  EXPECT_GT(c->layout.total_size(), 0);
}

// Every bad value is refused at start with the key it concerns, instead of
// a raw parser message, a wrapped number, or a coordinator whose every
// round aborts.
TEST(ServeConfigTest, BadValuesAreErrorsNamingTheKey) {
  const std::string dir = ConfigDir();
  auto error = [&](const std::string& json) {
    absl::StatusOr<ServeConfig> c = ParseServeConfig(json, dir);
    EXPECT_FALSE(c.ok()) << json;
    return c.ok() ? std::string() : std::string(c.status().message());
  };
  auto has = [](const std::string& message, const std::string& part) {
    return message.find(part) != std::string::npos;
  };
  const std::string ok_round = R"({"clients_per_round": 4, "min_clients": 3})";
  EXPECT_TRUE(has(error(R"({"base": "base", "insecure": true, "round": {"clip_norm": NaN}})"), "not valid JSON"));
  EXPECT_TRUE(has(error("[1]"), "must be a JSON object"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": "ten"})")), "round: \"clients_per_round\" must be an integer"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4.5})")), "\"clients_per_round\" must be an integer"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 100000000})")), "clients_per_round must be 2 to 1048576"));
  EXPECT_TRUE(has(error(Config(R"({"ring_bits": -1})")), "round: \"ring_bits\" must be an integer in [0, 4294967295]"));
  EXPECT_TRUE(has(error(Config(R"({"clip_norm": 1e999})")), "number overflow"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4, "min_clients": 3, "central_noise": true,
                                   "noise_multiplier": 1, "epsilon_budget_against_coordinator": 8})")),
                  "epsilon_budget_against_coordinator needs noise the clients add"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4, "min_clients": 3, "epsilon_budget": 8})")),
                  "epsilon_budget needs noise"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4, "min_clients": 3, "epsilon_budget": "lots"})")),
                  "round: \"epsilon_budget\" must be a number or \"inf\""));
  // "inf" (no budget), as `admin status --json` and simulation configs write it.
  absl::StatusOr<ServeConfig> no_budget = ParseServeConfig(
      Config(R"({"clients_per_round": 4, "min_clients": 3, "noise_multiplier": 1, "epsilon_budget": "inf",
                 "epsilon_budget_against_coordinator": 20})"),
      dir);
  ASSERT_TRUE(no_budget.ok()) << no_budget.status();
  EXPECT_TRUE(std::isinf(no_budget->runtime.round.epsilon_budget));
  EXPECT_EQ(no_budget->runtime.round.epsilon_budget_against_coordinator, 20);
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4, "min_clients": 3, "clip_norm": 1e-308})")),
                  "clip_norm must be in [1e-06, 1e+06], got 1e-308"));
  EXPECT_TRUE(has(error(Config(R"({"rotate": "yes"})")), "\"rotate\" must be true or false"));
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4, "min_clients": 3, "threshold": 4})")),
                  "threshold 4 exceeds a round of 3 clients"));
  // A noise no ring can carry: refused at start, naming the round size.
  EXPECT_TRUE(has(error(Config(R"({"clients_per_round": 4, "min_clients": 3, "noise_multiplier": 1e12, "ring_bits": 8})")),
                  "no round of 3 clients can run"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("max_rounds": -1)")), "max_rounds must be >= 0"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("state_dir": "")")), "\"state_dir\" is empty"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("tls": {"cert": "a", "key": "b", "ca": "c"})")),
                  "both \"tls\" and \"insecure\": true"));
  {
    // A base model whose global adapter (6.2e11 values, 12 TB in the
    // coordinator) no machine holds: refused before anything is allocated.
    const std::string big = dir + "/big";
    std::filesystem::create_directories(big);
    std::ofstream(big + "/config.json")
        << R"({"n_embd": 65536, "n_layer": 1024, "n_head": 64, "n_positions": 32, )"
        << R"("vocab_size": 259, "fedpers_tokenizer": "byte"})";
    EXPECT_TRUE(has(error(R"({"base": "big", "insecure": true, "lora": {"global_rank": 1024}, "round": )" +
                          ok_round + "}"),
                    "its global adapter of 618475290624 values needs about"));
  }
  EXPECT_TRUE(has(error(Config(ok_round, R"("stage_timeout_ms": 1e20)")), "\"stage_timeout_ms\" must be an integer in"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("stage_timeout_ms": 1000000000000)")), "\"stage_timeout_ms\" must be at most 604800000 (a week)"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("liveness_timeout_ms": 0)")), "liveness_timeout_ms must be positive"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("admin_page_bytes": 0)")), "admin_page_bytes must be 1 to 16777216, got 0"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("admin_page_bytes": 1e9)")), "admin_page_bytes must be 1 to 16777216"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("listen": 7443)")), "\"listen\" must be a string"));
  EXPECT_TRUE(has(error(Config(ok_round, R"("colour": 1)")), "unknown key \"colour\" in the serve config"));
  EXPECT_TRUE(has(error(R"({"insecure": true})"), "needs \"base\""));
  EXPECT_TRUE(has(error(R"({"insecure": true, "base": ""})"), "\"base\" is empty"));
  EXPECT_TRUE(has(error(R"({"base": "base", "tls": {"cert": "c"}})"), "\"tls\" needs \"key\""));
  EXPECT_TRUE(has(error(R"({"base": "base"})"), "needs \"tls\""));
}

}  // namespace
}  // namespace fedpers
