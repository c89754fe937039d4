#include "secure_agg/secagg_common.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"

namespace fedpers::secagg {
namespace {

using fedpers::v1::PeerKeys;
using fedpers::v1::SecAggParams;

// log P(X = i) for X ~ Binomial(k, p).
double LogBinomialPmf(uint32_t k, uint32_t i, double p) {
  if (p <= 0) return i == 0 ? 0 : -INFINITY;
  if (p >= 1) return i == k ? 0 : -INFINITY;
  return std::lgamma(k + 1.0) - std::lgamma(i + 1.0) - std::lgamma(k - i + 1.0) + i * std::log(p) +
         (k - i) * std::log1p(-p);
}

// P(X >= c) for X ~ Binomial(k, p).
double UpperTail(uint32_t k, double p, uint32_t c) {
  double sum = 0;
  for (uint32_t i = c; i <= k; ++i) sum += std::exp(LogBinomialPmf(k, i, p));
  return sum;
}

void PutU32(Bytes& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void PutU64(Bytes& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t GetU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint64_t GetU64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

// Position of each client (1..n) on the Harary cycle: a permutation drawn
// from the graph seed with AES-CTR and unbiased rejection.
std::vector<uint32_t> Positions(const SecAggParams& params) {
  const uint32_t n = params.num_clients();
  std::vector<uint32_t> perm(n);
  for (uint32_t i = 0; i < n; ++i) perm[i] = i;
  absl::StatusOr<AesCtrPrg> prg = AesCtrPrg::Create(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(params.graph_seed().data()), params.graph_seed().size()));
  std::vector<uint32_t> words(1024);
  size_t used = words.size();
  uint64_t block = 0;
  auto next = [&]() -> uint32_t {
    if (used == words.size()) {
      (void)prg->Generate(block, {reinterpret_cast<uint8_t*>(words.data()), words.size() * 4});
      block += words.size() / 4;
      used = 0;
    }
    return words[used++];
  };
  for (uint32_t i = n - 1; i > 0; --i) {
    const uint64_t bound = i + 1;
    const uint64_t limit = (uint64_t{1} << 32) - ((uint64_t{1} << 32) % bound);
    uint64_t r;
    do {
      r = next();
    } while (r >= limit);
    std::swap(perm[i], perm[r % bound]);
  }
  std::vector<uint32_t> position(n + 1);
  for (uint32_t slot = 0; slot < n; ++slot) position[perm[slot] + 1] = slot;
  return position;
}

}  // namespace

absl::StatusOr<DegreeAndThreshold> ChooseDegreeAndThreshold(uint32_t n, const SecAggAssumptions& a) {
  if (n < 2) return absl::InvalidArgumentError("secure aggregation needs at least 2 clients");
  if (!(a.dropout_rate >= 0 && a.dropout_rate < 1) || !(a.corrupt_fraction >= 0 && a.corrupt_fraction < 1)) {
    return absl::InvalidArgumentError("dropout rate and corrupt fraction must be in [0, 1)");
  }
  const double sec = std::ldexp(1.0, -a.security_bits), cor = std::ldexp(1.0, -a.correctness_bits);
  auto try_degree = [&](uint32_t k) -> std::optional<DegreeAndThreshold> {
    uint32_t c = 0;  // smallest C with P(Binomial(k, gamma) > C) <= 2^-sec
    while (c < k && UpperTail(k, a.corrupt_fraction, c + 1) > sec) ++c;
    uint32_t s = k;  // largest S with P(Binomial(k, 1 - delta) < S) <= 2^-cor
    while (s > 0 && UpperTail(k, a.dropout_rate, k - s + 1) > cor) --s;
    const uint32_t t = (k + c) / 2 + 1;
    if (t <= s && t <= k) return DegreeAndThreshold{k, t};
    return std::nullopt;
  };
  for (uint32_t k = 2; k < n - 1; k += 2) {
    if (auto r = try_degree(k)) return *r;
  }
  if (auto r = try_degree(n - 1)) return *r;
  return absl::FailedPreconditionError(absl::StrCat(
      "no degree and threshold give 2^-", a.security_bits, " security against a ", a.corrupt_fraction,
      " corrupt fraction and 2^-", a.correctness_bits, " failure at a ", a.dropout_rate, " dropout rate for n = ", n,
      "; set the threshold explicitly"));
}

SecAggParams MakeSecAggParams(uint32_t n, uint32_t k, uint32_t t, uint64_t m, uint32_t bits) {
  SecAggParams p;
  p.set_num_clients(n);
  p.set_degree(k);
  p.set_threshold(t);
  p.set_vector_length(m);
  p.set_ring_bits(bits);
  absl::StatusOr<Key32> seed = RandomKey32();
  if (seed.ok()) p.set_graph_seed(std::string(seed->begin(), seed->end()));  // else ValidateParams refuses it
  return p;
}

absl::Status ValidateParams(const SecAggParams& p) {
  const uint32_t n = p.num_clients(), k = p.degree(), t = p.threshold();
  if (n < 2) return absl::InvalidArgumentError("SecAgg: at least 2 clients");
  if (n > (1u << 20)) return absl::InvalidArgumentError("SecAgg: at most 2^20 clients");
  if (k < 1 || k > n - 1) return absl::InvalidArgumentError(absl::StrCat("SecAgg: degree ", k, " not in [1, ", n - 1, "]"));
  if (k != n - 1 && k % 2 != 0) return absl::InvalidArgumentError("SecAgg: the degree must be even (or n - 1)");
  // Shares go to the k neighbours and the client itself.
  if (t < 1 || t > k + 1) {
    return absl::InvalidArgumentError(absl::StrCat("SecAgg: threshold ", t, " not in [1, ", k + 1, "]"));
  }
  if (p.ring_bits() < 1 || p.ring_bits() > 32) return absl::InvalidArgumentError("SecAgg: ring bits not in [1, 32]");
  if (p.vector_length() < 1 || p.vector_length() > (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError("SecAgg: vector length not in [1, 2^32]");
  }
  if (p.graph_seed().size() != 32) return absl::InvalidArgumentError("SecAgg: the graph seed must be 32 bytes");
  return absl::OkStatus();
}

std::vector<std::vector<uint32_t>> NeighbourGraph(const SecAggParams& params) {
  const uint32_t n = params.num_clients(), k = params.degree();
  std::vector<std::vector<uint32_t>> graph(n + 1);
  if (k >= n - 1) {
    for (uint32_t i = 1; i <= n; ++i) {
      for (uint32_t j = 1; j <= n; ++j) {
        if (j != i) graph[i].push_back(j);
      }
    }
    return graph;
  }
  const std::vector<uint32_t> position = Positions(params);
  std::vector<uint32_t> at(n);
  for (uint32_t c = 1; c <= n; ++c) at[position[c]] = c;
  for (uint32_t c = 1; c <= n; ++c) {
    for (uint32_t d = 1; d <= k / 2; ++d) {
      graph[c].push_back(at[(position[c] + d) % n]);
      graph[c].push_back(at[(position[c] + n - d) % n]);
    }
    std::sort(graph[c].begin(), graph[c].end());
  }
  return graph;
}

std::vector<uint32_t> Neighbours(const SecAggParams& params, uint32_t client) {
  if (client < 1 || client > params.num_clients()) return {};
  return NeighbourGraph(params)[client];
}

Digest32 SessionId(const SecAggParams& params, std::span<const PeerKeys> advertised) {
  std::string p;
  params.SerializeToString(&p);  // proto3 scalars serialize deterministically
  Bytes keys;
  PutU64(keys, p.size());
  keys.insert(keys.end(), p.begin(), p.end());
  for (const PeerKeys& k : advertised) {
    PutU32(keys, k.client_id());
    PutU32(keys, static_cast<uint32_t>(k.encryption_key().size()));
    keys.insert(keys.end(), k.encryption_key().begin(), k.encryption_key().end());
    PutU32(keys, static_cast<uint32_t>(k.masking_key().size()));
    keys.insert(keys.end(), k.masking_key().begin(), k.masking_key().end());
  }
  static const std::string kLabel = "fedpers secagg+ session v1";
  return Sha256({std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kLabel.data()), kLabel.size()), keys});
}

namespace {
absl::StatusOr<Key32> Derive(const Key32& ikm, std::span<const uint8_t> session_id, absl::string_view label) {
  absl::StatusOr<Bytes> out =
      HkdfSha256(ikm, session_id, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(label.data()), label.size()), 32);
  if (!out.ok()) return out.status();
  Key32 k{};
  std::copy(out->begin(), out->end(), k.begin());
  return k;
}
}  // namespace

absl::StatusOr<Key32> ChannelKey(const Key32& shared, std::span<const uint8_t> session_id) {
  return Derive(shared, session_id, "fedpers secagg+ channel v1");
}
absl::StatusOr<Key32> PairwiseMaskSeed(const Key32& shared, std::span<const uint8_t> session_id) {
  return Derive(shared, session_id, "fedpers secagg+ pairwise mask v1");
}
absl::StatusOr<Key32> SelfMaskKey(const Key32& seed, std::span<const uint8_t> session_id) {
  return Derive(seed, session_id, "fedpers secagg+ self mask v1");
}

std::array<uint8_t, kGcmNonceBytes> ShareNonce(uint32_t sender, uint32_t recipient) {
  // Unique per channel key: the key is shared by both directions, the nonce
  // is not (sender and recipient swap).
  std::array<uint8_t, kGcmNonceBytes> nonce{};
  for (int i = 0; i < 4; ++i) {
    nonce[i] = static_cast<uint8_t>(sender >> (24 - 8 * i));
    nonce[4 + i] = static_cast<uint8_t>(recipient >> (24 - 8 * i));
  }
  nonce[11] = 1;  // round 1 (ShareKeys) is the only encrypted round
  return nonce;
}

Bytes ShareAad(std::span<const uint8_t> session_id, uint32_t sender, uint32_t recipient) {
  static const std::string kLabel = "fedpers secagg+ share c2c round1";
  Bytes aad(kLabel.begin(), kLabel.end());
  aad.insert(aad.end(), session_id.begin(), session_id.end());
  PutU32(aad, sender);
  PutU32(aad, recipient);
  return aad;
}

absl::Status AddMask(std::span<uint32_t> out, const Key32& key, int sign, int bits, uint64_t first) {
  if (first % 16 != 0) return absl::InvalidArgumentError("mask chunks must start at a multiple of 16");
  const size_t width = static_cast<size_t>((bits + 7) / 8);
  absl::StatusOr<AesCtrPrg> prg = AesCtrPrg::Create(key);
  if (!prg.ok()) return prg.status();
  thread_local Bytes stream;
  stream.resize(out.size() * width);
  if (absl::Status s = prg->Generate(first * width / 16, stream); !s.ok()) return s;
  const uint32_t mask = bits == 32 ? 0xffffffffu : (1u << bits) - 1;
  const uint8_t* p = stream.data();
  auto apply = [&](auto read) {
    if (sign > 0) {
      for (size_t i = 0; i < out.size(); ++i) out[i] = (out[i] + read(p + i * width)) & mask;
    } else {
      for (size_t i = 0; i < out.size(); ++i) out[i] = (out[i] - read(p + i * width)) & mask;
    }
  };
  switch (width) {
    case 1: apply([](const uint8_t* q) { return uint32_t{q[0]}; }); break;
    case 2: apply([](const uint8_t* q) { return uint32_t{q[0]} | uint32_t{q[1]} << 8; }); break;
    case 3: apply([](const uint8_t* q) { return uint32_t{q[0]} | uint32_t{q[1]} << 8 | uint32_t{q[2]} << 16; }); break;
    default:
      apply([](const uint8_t* q) {
        return uint32_t{q[0]} | uint32_t{q[1]} << 8 | uint32_t{q[2]} << 16 | uint32_t{q[3]} << 24;
      });
  }
  return absl::OkStatus();
}

Bytes SerializeBundle(const ShareBundle& b) {
  Bytes out;
  PutU32(out, b.sender);
  PutU32(out, b.recipient);
  for (const ShamirShare* s : {&b.key_share, &b.seed_share}) {
    PutU32(out, s->x);
    PutU32(out, static_cast<uint32_t>(s->y.size()));
    for (uint64_t v : s->y) PutU64(out, v);
  }
  return out;
}

absl::StatusOr<ShareBundle> ParseBundle(std::span<const uint8_t> bytes) {
  const size_t chunks = ShamirChunks(kSecretBytes);
  const size_t expected = 8 + 2 * (8 + 8 * chunks);
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(absl::StrCat("share bundle has ", bytes.size(), " bytes, expected ", expected));
  }
  ShareBundle b;
  const uint8_t* p = bytes.data();
  b.sender = GetU32(p);
  b.recipient = GetU32(p + 4);
  p += 8;
  for (ShamirShare* s : {&b.key_share, &b.seed_share}) {
    s->x = GetU32(p);
    if (GetU32(p + 4) != chunks) return absl::InvalidArgumentError("share bundle has a share of the wrong length");
    p += 8;
    s->y.resize(chunks);
    for (size_t i = 0; i < chunks; ++i, p += 8) s->y[i] = GetU64(p);
  }
  return b;
}

}  // namespace fedpers::secagg
