#include "bench/secagg_bench.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/progress.h"
#include "secure_agg/secagg_client.h"
#include "secure_agg/secagg_server.h"

namespace fedpers {
namespace {

using namespace secagg;
using namespace fedpers::v1;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<uint32_t> RandomInput(uint64_t m, uint32_t bits, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<uint32_t> v(m);
  const uint32_t mask = bits == 32 ? 0xffffffffu : (1u << bits) - 1;
  for (uint32_t& x : v) x = static_cast<uint32_t>(gen()) & mask;
  return v;
}

absl::StatusOr<std::pair<double, double>> MaskingCost() {
  const uint64_t m = uint64_t{1} << 20;
  Key32 key = *RandomKey32();
  std::vector<uint32_t> out(m, 0);
  std::vector<double> mask_t, aes_t;
  Bytes stream(2 * m);
  absl::StatusOr<AesCtrPrg> prg = AesCtrPrg::Create(key);
  if (!prg.ok()) return prg.status();
  for (int rep = 0; rep < 7; ++rep) {
    double t0 = Now();
    for (uint64_t start = 0; start < m; start += 1 << 14) {
      if (absl::Status s = AddMask({out.data() + start, 1 << 14}, key, +1, 16, start); !s.ok()) return s;
    }
    double t1 = Now();
    if (absl::Status s = prg->Generate(0, stream); !s.ok()) return s;
    double t2 = Now();
    mask_t.push_back(t1 - t0);
    aes_t.push_back(t2 - t1);
  }
  return std::make_pair(Median(mask_t) / m * 1e9, Median(aes_t) / m * 1e9);
}

// A full session with 10% dropout: half of the dropped stop before their
// masked input (their pairwise masks must be removed), half after it (still
// counted; their self masks are rebuilt from others' shares).
absl::StatusOr<UnmaskingFigure> Unmasking(uint32_t n, uint64_t m) {
  absl::StatusOr<DegreeAndThreshold> kt = ChooseDegreeAndThreshold(n, SecAggAssumptions{});
  if (!kt.ok()) return kt.status();
  const uint32_t bits = 16;
  SecAggParams params = MakeSecAggParams(n, kt->degree, kt->threshold, m, bits);
  UnmaskingFigure f;
  f.n = n;
  f.m = m;
  f.degree = kt->degree;
  f.threshold = kt->threshold;
  absl::StatusOr<SecAggServer> server = SecAggServer::Create(params);
  if (!server.ok()) return server.status();
  std::map<uint32_t, SecAggClient> clients;
  std::vector<uint32_t> expected(m, 0);
  auto dropped_before_input = [&](uint32_t id) { return id % 20 == 1; };
  auto dropped_after_input = [&](uint32_t id) { return id % 20 == 11; };
  for (uint32_t i = 1; i <= n; ++i) {
    absl::StatusOr<SecAggClient> c = SecAggClient::Create(params, i);
    if (!c.ok()) return c.status();
    clients.emplace(i, std::move(*c));
    absl::StatusOr<SecAggClientMessage> msg = clients.at(i).Start();
    if (!msg.ok()) return msg.status();
    if (absl::Status s = server->Handle(*msg); !s.ok()) return s;
  }
  size_t peak = 0;
  auto deliver = [&](const ServerMessages& out, bool masking_round) -> absl::Status {
    for (const auto& [id, m_] : out) {
      if (masking_round) {
        if (dropped_before_input(id)) continue;
        std::vector<uint32_t> input = RandomInput(m, bits, id);
        for (uint64_t e = 0; e < m; ++e) expected[e] = (expected[e] + input[e]) & 0xffff;
        if (absl::Status s = clients.at(id).SetInput(std::move(input)); !s.ok()) return s;
      }
      if (m_.has_unmasking_request() && dropped_after_input(id)) continue;
      absl::StatusOr<SecAggClientMessage> reply = clients.at(id).Handle(m_);
      if (!reply.ok()) return reply.status();
      if (absl::Status s = server->Handle(*reply); !s.ok()) return s;
      peak = std::max(peak, server->MemoryBytes());
    }
    return absl::OkStatus();
  };
  absl::StatusOr<ServerMessages> keys = server->FinishKeys();
  if (!keys.ok()) return keys.status();
  if (absl::Status s = deliver(*keys, false); !s.ok()) return s;
  absl::StatusOr<ServerMessages> shares = server->FinishShares();
  if (!shares.ok()) return shares.status();
  if (absl::Status s = deliver(*shares, true); !s.ok()) return s;
  absl::StatusOr<ServerMessages> unmask = server->FinishInputs();
  if (!unmask.ok()) return unmask.status();
  if (absl::Status s = deliver(*unmask, false); !s.ok()) return s;
  peak = std::max(peak, server->MemoryBytes());
  const double t0 = Now();
  absl::StatusOr<std::vector<uint32_t>> sum = server->Finish();
  f.unmask_seconds = Now() - t0;
  if (!sum.ok()) return sum.status();
  f.correct = *sum == expected;
  f.survivors = static_cast<uint32_t>(server->survivors().size());
  f.dropped_with_masks = server->stats().shared - f.survivors;
  f.self_masks = server->stats().self_masks_removed;
  f.pairwise_masks = server->stats().pairwise_masks_removed;
  f.ns_per_element_per_mask = f.unmask_seconds * 1e9 / (static_cast<double>(m) * (f.self_masks + f.pairwise_masks));
  f.server_state_bytes = peak;
  return f;
}

// One client's upload over the whole protocol at n = 2^10, m = 2^20.
absl::StatusOr<std::pair<uint64_t, uint32_t>> Upload() {
  const uint32_t n = 1024, input_bits = 16, bits = input_bits + 10;
  const uint64_t m = uint64_t{1} << 20;
  absl::StatusOr<DegreeAndThreshold> kt = ChooseDegreeAndThreshold(n, SecAggAssumptions{});
  if (!kt.ok()) return kt.status();
  SecAggParams params = MakeSecAggParams(n, kt->degree, kt->threshold, m, bits);
  absl::StatusOr<SecAggServer> server = SecAggServer::Create(params);
  if (!server.ok()) return server.status();
  std::map<uint32_t, SecAggClient> clients;
  uint64_t upload = 0;
  for (uint32_t i = 1; i <= n; ++i) {
    clients.emplace(i, *SecAggClient::Create(params, i));
    SecAggClientMessage msg = *clients.at(i).Start();
    if (i == 1) upload += msg.ByteSizeLong();
    if (absl::Status s = server->Handle(msg); !s.ok()) return s;
  }
  absl::StatusOr<ServerMessages> keys = server->FinishKeys();
  if (!keys.ok()) return keys.status();
  for (const auto& [id, msg] : *keys) {
    absl::StatusOr<SecAggClientMessage> reply = clients.at(id).Handle(msg);
    if (!reply.ok()) return reply.status();
    if (id == 1) upload += reply->ByteSizeLong();
    if (absl::Status s = server->Handle(*reply); !s.ok()) return s;
  }
  absl::StatusOr<ServerMessages> shares = server->FinishShares();
  if (!shares.ok()) return shares.status();
  // Client 1 masks its 16-bit input in the 26-bit ring and uploads it.
  SecAggClient& me = clients.at(1);
  if (absl::Status s = me.SetInput(RandomInput(m, input_bits, 1)); !s.ok()) return s;
  absl::StatusOr<SecAggClientMessage> masked = me.Handle(shares->at(1));
  if (!masked.ok()) return masked.status();
  upload += masked->ByteSizeLong();
  // The unmasking request an honest server sends when every client submitted.
  SecAggServerMessage request;
  request.mutable_unmasking_request()->set_session_id(masked->masked_input().session_id());
  for (uint32_t i = 1; i <= n; ++i) request.mutable_unmasking_request()->add_survivors(i);
  absl::StatusOr<SecAggClientMessage> response = me.Handle(request);
  if (!response.ok()) return response.status();
  upload += response->ByteSizeLong();
  return std::make_pair(upload, kt->degree);
}

}  // namespace

absl::StatusOr<SecAggBenchResult> RunSecAggBench(const SecAggBenchOptions& o) {
  SecAggBenchResult r;
  std::vector<std::pair<uint32_t, uint64_t>> sizes = {{100, 100000}, {100, 1000000}, {1000, 100000}};
  if (o.include_largest) sizes.push_back({1000, 1000000});
  ProgressBar bar("bench secagg", static_cast<int64_t>(sizes.size()) + 2, "stage", stderr, o.progress);
  absl::StatusOr<std::pair<double, double>> mask = MaskingCost();
  if (!mask.ok()) return mask.status();
  r.client_mask_ns_per_element = mask->first;
  r.aes_ctr_ns_per_element = mask->second;
  bar.Update(1, "masking");
  int64_t done = 1;
  for (auto [n, m] : sizes) {
    absl::StatusOr<UnmaskingFigure> f = Unmasking(n, m);
    if (!f.ok()) return f.status();
    r.unmasking.push_back(*f);
    bar.Update(++done, absl::StrCat("n=", n, " m=", m));
  }
  absl::StatusOr<std::pair<uint64_t, uint32_t>> up = Upload();
  if (!up.ok()) return up.status();
  r.upload_bytes = up->first;
  r.upload_degree = up->second;
  r.upload_expansion = static_cast<double>(up->first) / (static_cast<double>(uint64_t{1} << 20) * 16.0 / 8.0);
  bar.Update(++done, "upload");
  bar.Finish();
  return r;
}

}  // namespace fedpers
