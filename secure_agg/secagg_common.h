// Parts of SecAgg+ (Bell et al., CCS 2020; Bonawitz et al., CCS 2017) shared
// by the client and server state machines: parameter choice, the neighbour
// graph, session binding, key derivation and mask expansion.
#ifndef FEDPERS_SECURE_AGG_SECAGG_COMMON_H_
#define FEDPERS_SECURE_AGG_SECAGG_COMMON_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fedpers/v1/secagg.pb.h"
#include "secure_agg/crypto.h"
#include "secure_agg/shamir.h"

namespace fedpers::secagg {

// The assumptions behind the choice of degree k and threshold t.
struct SecAggAssumptions {
  double dropout_rate = 0.1;      // delta: each client drops independently with this probability
  double corrupt_fraction = 0.1;  // gamma: clients colluding with the server
  int correctness_bits = 20;      // P(a neighbourhood keeps < t live members) <= 2^-20
  int security_bits = 40;         // P(corrupt neighbours exceed the bound) <= 2^-40
};

struct DegreeAndThreshold {
  uint32_t degree = 0;     // k, neighbours per client (n - 1: complete graph)
  uint32_t threshold = 0;  // t
};

// Smallest even degree k (or the complete graph) and threshold t with
//   t >  (k + C) / 2   (security: a malicious server that lies about who
//                       dropped still cannot collect t shares of both secrets
//                       of an honest client; C bounds the corrupt neighbours,
//                       P(Binomial(k, gamma) > C) <= 2^-security_bits), and
//   t <= S             (correctness: P(Binomial(k, 1 - delta) < S) <=
//                       2^-correctness_bits live neighbours remain).
// The k neighbours of a client are (nearly) a uniform k-subset because the
// Harary graph is relabelled by a random permutation. FailedPrecondition when
// no k <= n - 1 satisfies both (small n: override t explicitly).
absl::StatusOr<DegreeAndThreshold> ChooseDegreeAndThreshold(uint32_t num_clients, const SecAggAssumptions& a);

// Parameters for n clients with degree k, threshold t, m values of b bits
// and a fresh random graph seed (not validated: see ValidateParams).
fedpers::v1::SecAggParams MakeSecAggParams(uint32_t n, uint32_t k, uint32_t t, uint64_t m, uint32_t bits);

// Structural checks: n >= 2, 1 <= t <= k <= n - 1, k even unless k = n - 1,
// 1 <= b <= 32, m >= 1, a 32-byte graph seed.
absl::Status ValidateParams(const fedpers::v1::SecAggParams& params);

// Neighbours of `client` (1-based) in the Harary graph H(n, k) after the
// random relabelling from the graph seed, sorted. Symmetric.
std::vector<uint32_t> Neighbours(const fedpers::v1::SecAggParams& params, uint32_t client);

// The graph for all clients at once (index 0 unused): cheaper than n calls.
std::vector<std::vector<uint32_t>> NeighbourGraph(const fedpers::v1::SecAggParams& params);

// SHA-256 over the serialized parameters and every advertised (id, keys) in
// id order: binds a session to its parameters and its participants' keys.
Digest32 SessionId(const fedpers::v1::SecAggParams& params, std::span<const fedpers::v1::PeerKeys> advertised);

// Symmetric key of the share channel between two clients, and the 32-byte
// seed of their pairwise mask, from an X25519 shared secret.
absl::StatusOr<Key32> ChannelKey(const Key32& shared_secret, std::span<const uint8_t> session_id);
absl::StatusOr<Key32> PairwiseMaskSeed(const Key32& shared_secret, std::span<const uint8_t> session_id);
absl::StatusOr<Key32> SelfMaskKey(const Key32& seed, std::span<const uint8_t> session_id);

// AEAD nonce and associated data of an encrypted share: bind session,
// round, sender, recipient and direction (client to client).
std::array<uint8_t, kGcmNonceBytes> ShareNonce(uint32_t sender, uint32_t recipient);
Bytes ShareAad(std::span<const uint8_t> session_id, uint32_t sender, uint32_t recipient);

// Adds sign * PRG(key) to out[i] for elements [first, first + out.size())
// of the mask stream, modulo 2^bits. The stream spends ceil(bits / 8) bytes
// of AES-256-CTR keystream per element, so any chunk can be expanded on its
// own. `first` must be a multiple of 16.
absl::Status AddMask(std::span<uint32_t> out, const Key32& key, int sign, int bits, uint64_t first);

// Plaintext of one client-to-client share bundle: the shares of the sender's
// masking private key and self-mask seed at the recipient's point.
struct ShareBundle {
  uint32_t sender = 0, recipient = 0;
  ShamirShare key_share, seed_share;
};
Bytes SerializeBundle(const ShareBundle& bundle);
absl::StatusOr<ShareBundle> ParseBundle(std::span<const uint8_t> bytes);

inline constexpr size_t kSecretBytes = 32;

}  // namespace fedpers::secagg

#endif  // FEDPERS_SECURE_AGG_SECAGG_COMMON_H_
