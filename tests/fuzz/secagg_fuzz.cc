// libFuzzer target for SecAgg+ message handling. The state machines of a
// small live session are snapshotted at every round; each input either
// mutates the honest message of a chosen round (byte flips, truncation,
// insertion) or is parsed as a message outright, and is delivered to a client
// or to the server in that round. The machines must answer with a status or
// abort cleanly: never crash, hang or leak (ASan, UBSan).
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "secure_agg/secagg_client.h"
#include "secure_agg/secagg_server.h"

namespace {

using namespace fedpers::secagg;
using namespace fedpers::v1;

constexpr uint32_t kClients = 3;

struct Snapshots {
  // Server collecting round r (0..3); clients awaiting server message r (0..2).
  std::vector<SecAggServer> servers;
  std::vector<std::map<uint32_t, SecAggClient>> clients;
  // Honest serialized messages: server -> client in round r (0..2), client ->
  // server in round r (0..3).
  std::vector<std::map<uint32_t, std::string>> to_clients, to_server;
};

Snapshots Build() {
  SecAggParams p;
  p.set_num_clients(kClients);
  p.set_degree(2);
  p.set_threshold(2);
  p.set_vector_length(8);
  p.set_ring_bits(16);
  p.set_graph_seed(std::string(32, 'g'));
  Snapshots s;
  SecAggServer server = *SecAggServer::Create(p);
  std::map<uint32_t, SecAggClient> clients;
  s.to_server.emplace_back();
  for (uint32_t i = 1; i <= kClients; ++i) {
    clients.emplace(i, *SecAggClient::Create(p, i, std::vector<uint32_t>(8, i)));
    SecAggClientMessage advert = *clients.at(i).Start();
    advert.SerializeToString(&s.to_server.back()[i]);
    (void)server.Handle(advert);
  }
  for (int round = 0; round < 3; ++round) {
    s.servers.push_back(server);
    s.clients.push_back(clients);
    absl::StatusOr<ServerMessages> out =
        round == 0 ? server.FinishKeys() : round == 1 ? server.FinishShares() : server.FinishInputs();
    s.to_clients.emplace_back();
    s.to_server.emplace_back();
    for (const auto& [id, m] : *out) {
      m.SerializeToString(&s.to_clients.back()[id]);
      absl::StatusOr<SecAggClientMessage> reply = clients.at(id).Handle(m);
      if (!reply.ok()) continue;
      reply->SerializeToString(&s.to_server.back()[id]);
      (void)server.Handle(*reply);
    }
  }
  s.servers.push_back(server);
  return s;
}

// Applies the mutation program in `ops` to `msg`: triples (kind, position,
// byte) flip, overwrite, insert or truncate.
std::string Mutate(std::string msg, const uint8_t* ops, size_t n) {
  for (size_t i = 0; i + 2 < n; i += 3) {
    const size_t pos = msg.empty() ? 0 : (ops[i + 1] * 257u + ops[i + 2]) % (msg.size() + 1);
    switch (ops[i] % 4) {
      case 0:
        if (pos < msg.size()) msg[pos] = static_cast<char>(msg[pos] ^ ops[i + 2]);
        break;
      case 1:
        if (pos < msg.size()) msg[pos] = static_cast<char>(ops[i + 2]);
        break;
      case 2:
        msg.insert(pos, 1, static_cast<char>(ops[i + 2]));
        break;
      default:
        msg.resize(pos);
    }
  }
  return msg;
}

void FinishRound(SecAggServer& server) {
  switch (server.state()) {
    case ServerState::kCollectingKeys: (void)server.FinishKeys(); break;
    case ServerState::kCollectingShares: (void)server.FinishShares(); break;
    case ServerState::kCollectingInputs: (void)server.FinishInputs(); break;
    case ServerState::kCollectingUnmasking: (void)server.Finish(); break;
    default: break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Snapshots snapshots = Build();
  if (size < 2) return 0;
  const uint8_t selector = data[0];
  const bool raw = (selector & 0x80) != 0;     // parse the input as a message outright
  const bool to_client = (selector & 1) != 0;
  const uint32_t who = 1 + (selector >> 1) % kClients;
  const size_t round = (selector >> 3) % 4;
  const uint8_t* body = data + 1;
  const size_t body_size = size - 1;
  if (to_client) {
    const size_t r = round % snapshots.clients.size();
    std::string bytes = raw ? std::string(reinterpret_cast<const char*>(body), body_size)
                            : Mutate(snapshots.to_clients[r].at(who), body, body_size);
    SecAggServerMessage m;
    if (!m.ParseFromString(bytes)) return 0;
    std::map<uint32_t, SecAggClient> clients = snapshots.clients[r];
    SecAggClient& c = clients.at(who);
    (void)c.Handle(m);
    (void)c.Handle(m);  // a replay after whatever the first did
  } else {
    std::string bytes = raw ? std::string(reinterpret_cast<const char*>(body), body_size)
                            : Mutate(snapshots.to_server[round].at(who), body, body_size);
    SecAggClientMessage m;
    if (!m.ParseFromString(bytes)) return 0;
    SecAggServer server = snapshots.servers[round];
    (void)server.Handle(m);
    (void)server.Handle(m);
    // Honest messages of the round from the others, then the round's end.
    for (const auto& [id, honest] : snapshots.to_server[round]) {
      if (id == who) continue;
      SecAggClientMessage h;
      if (h.ParseFromString(honest)) (void)server.Handle(h);
    }
    FinishRound(server);
  }
  return 0;
}
