// Runs a SecAgg+ session in process, with a dropout schedule, for tests.
#ifndef FEDPERS_TESTS_SECURE_AGG_SECAGG_HARNESS_H_
#define FEDPERS_TESTS_SECURE_AGG_SECAGG_HARNESS_H_

#include <map>
#include <random>
#include <vector>

#include "secure_agg/secagg_client.h"
#include "secure_agg/secagg_server.h"

namespace fedpers::secagg::testing {

// When a client stops: before sending its message of round r (0..3), or
// never (kNever). kBeforeUnmasking means it sent its masked input and then
// vanished.
enum DropPoint { kBeforeAdvertise = 0, kBeforeShares = 1, kBeforeInput = 2, kBeforeUnmasking = 3, kNever = 4 };

inline fedpers::v1::SecAggParams MakeParams(uint32_t n, uint32_t k, uint32_t t, uint64_t m, uint32_t bits) {
  fedpers::v1::SecAggParams p = MakeSecAggParams(n, k, t, m, bits);
  p.set_session_nonce(7);
  return p;
}

struct SessionResult {
  absl::StatusOr<std::vector<uint32_t>> sum = absl::UnknownError("not run");
  std::vector<uint32_t> expected;  // plain modular sum over the clients that sent masked inputs
  std::set<uint32_t> survivors;
};

// Random inputs in Z_(2^b); client i drops at drops[i] (default never).
inline SessionResult RunSession(const fedpers::v1::SecAggParams& params, const std::map<uint32_t, DropPoint>& drops,
                                uint64_t input_seed = 1) {
  using fedpers::v1::SecAggClientMessage;
  const uint32_t n = params.num_clients();
  const uint32_t mask = params.ring_bits() == 32 ? 0xffffffffu : (1u << params.ring_bits()) - 1;
  std::mt19937_64 gen(input_seed);
  std::vector<std::vector<uint32_t>> inputs(n + 1);
  std::map<uint32_t, SecAggClient> clients;
  for (uint32_t i = 1; i <= n; ++i) {
    inputs[i].resize(params.vector_length());
    for (uint32_t& v : inputs[i]) v = static_cast<uint32_t>(gen()) & mask;
    clients.emplace(i, *SecAggClient::Create(params, i, inputs[i]));
  }
  auto drop_point = [&](uint32_t i) {
    auto it = drops.find(i);
    return it == drops.end() ? kNever : it->second;
  };
  SessionResult result;
  SecAggServer server = *SecAggServer::Create(params);
  for (uint32_t i = 1; i <= n; ++i) {
    if (drop_point(i) <= kBeforeAdvertise) continue;
    auto msg = clients.at(i).Start();
    if (msg.ok()) (void)server.Handle(*msg);
  }
  int round = 1;
  auto step = [&](absl::StatusOr<ServerMessages> out) -> bool {
    if (!out.ok()) {
      result.sum = out.status();
      return false;
    }
    for (auto& [id, m] : *out) {
      if (drop_point(id) <= round) continue;
      auto reply = clients.at(id).Handle(m);
      if (reply.ok()) (void)server.Handle(*reply);
    }
    ++round;
    return true;
  };
  if (!step(server.FinishKeys())) return result;
  if (!step(server.FinishShares())) return result;
  if (!step(server.FinishInputs())) return result;
  result.sum = server.Finish();
  result.survivors = server.survivors();
  result.expected.assign(params.vector_length(), 0);
  for (uint32_t i : result.survivors) {
    for (size_t e = 0; e < result.expected.size(); ++e) result.expected[e] = (result.expected[e] + inputs[i][e]) & mask;
  }
  return result;
}

}  // namespace fedpers::secagg::testing

#endif  // FEDPERS_TESTS_SECURE_AGG_SECAGG_HARNESS_H_
