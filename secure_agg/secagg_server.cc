#include "secure_agg/secagg_server.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "secure_agg/ring_encoding.h"

namespace fedpers::secagg {
namespace {

using namespace fedpers::v1;

constexpr size_t kChunk = 1 << 14;  // elements per unmasking chunk (multiple of 16)

const char* RoundName(ServerState s) {
  switch (s) {
    case ServerState::kCollectingKeys: return "AdvertiseKeys";
    case ServerState::kCollectingShares: return "ShareKeys";
    case ServerState::kCollectingInputs: return "MaskedInputCollection";
    case ServerState::kCollectingUnmasking: return "Unmasking";
    case ServerState::kDone: return "done";
    case ServerState::kAborted: return "aborted";
  }
  return "?";
}

}  // namespace

absl::StatusOr<SecAggServer> SecAggServer::Create(SecAggParams params) {
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  SecAggServer server;
  server.params_ = std::move(params);
  server.graph_ = NeighbourGraph(server.params_);
  return server;
}

absl::Status SecAggServer::Abort(absl::Status why) {
  state_ = ServerState::kAborted;
  abort_status_ = absl::Status(why.code(), absl::StrCat("SecAgg session aborted: ", why.message()));
  sum_.clear();
  seed_shares_.clear();
  key_shares_.clear();
  return abort_status_;
}

absl::Status SecAggServer::CheckSender(uint32_t id, const std::string& session, ServerState round) const {
  if (state_ == ServerState::kAborted) return abort_status_;
  if (state_ != round) {
    return absl::FailedPreconditionError(absl::StrCat("a ", RoundName(round), " message from client ", id,
                                                      " arrived during ", RoundName(state_), " (late or early)"));
  }
  if (id < 1 || id > params_.num_clients()) {
    return absl::InvalidArgumentError(absl::StrCat("message from unknown client id ", id));
  }
  if (round != ServerState::kCollectingKeys && session != session_id_) {
    return absl::InvalidArgumentError(absl::StrCat("message from client ", id, " belongs to another session"));
  }
  return absl::OkStatus();
}

absl::Status SecAggServer::Handle(const SecAggClientMessage& m) {
  switch (m.message_case()) {
    case SecAggClientMessage::kAdvertiseKeys: return HandleAdvertiseKeys(m.advertise_keys());
    case SecAggClientMessage::kShareKeys: return HandleShareKeys(m.share_keys());
    case SecAggClientMessage::kMaskedInput: return HandleMaskedInput(m.masked_input());
    case SecAggClientMessage::kUnmaskingResponse: return HandleUnmaskingResponse(m.unmasking_response());
    default: return absl::InvalidArgumentError("empty SecAgg client message");
  }
}

absl::Status SecAggServer::HandleAdvertiseKeys(const AdvertiseKeys& m) {
  const PeerKeys& k = m.keys();
  if (absl::Status s = CheckSender(k.client_id(), "", ServerState::kCollectingKeys); !s.ok()) return s;
  if (keys_.count(k.client_id())) return absl::AlreadyExistsError(absl::StrCat("client ", k.client_id(), " advertised twice"));
  static const std::string kZero(32, '\0');
  if (k.encryption_key().size() != 32 || k.masking_key().size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat("client ", k.client_id(), " advertised keys of the wrong size"));
  }
  if (k.encryption_key() == kZero || k.masking_key() == kZero || k.encryption_key() == k.masking_key()) {
    return absl::InvalidArgumentError(absl::StrCat("client ", k.client_id(), " advertised a degenerate key"));
  }
  for (const auto& [id, other] : keys_) {
    if (other.encryption_key() == k.encryption_key() || other.masking_key() == k.masking_key() ||
        other.encryption_key() == k.masking_key() || other.masking_key() == k.encryption_key()) {
      return absl::InvalidArgumentError(absl::StrCat("client ", k.client_id(), " advertised keys of client ", id));
    }
  }
  keys_[k.client_id()] = k;
  return absl::OkStatus();
}

absl::StatusOr<ServerMessages> SecAggServer::FinishKeys() {
  if (state_ != ServerState::kCollectingKeys) return absl::FailedPreconditionError("FinishKeys out of order");
  stats_.advertised = static_cast<uint32_t>(keys_.size());
  if (keys_.size() < params_.threshold()) {
    return Abort(absl::FailedPreconditionError(absl::StrCat(keys_.size(), " clients advertised keys, fewer than the threshold ",
                                                            params_.threshold())));
  }
  std::vector<PeerKeys> advertised;
  for (const auto& [id, k] : keys_) advertised.push_back(k);
  const Digest32 session = SessionId(params_, advertised);
  session_id_.assign(session.begin(), session.end());
  ServerMessages out;
  for (const auto& [id, k] : keys_) {
    KeysBroadcast* b = out[id].mutable_keys_broadcast();
    b->set_session_id(session_id_);
    for (const PeerKeys& p : advertised) *b->add_advertised() = p;
  }
  state_ = ServerState::kCollectingShares;
  return out;
}

absl::Status SecAggServer::HandleShareKeys(const ShareKeys& m) {
  const uint32_t from = m.client_id();
  if (absl::Status s = CheckSender(from, m.session_id(), ServerState::kCollectingShares); !s.ok()) return s;
  if (!keys_.count(from)) return absl::FailedPreconditionError(absl::StrCat("client ", from, " did not advertise keys"));
  if (shares_.count(from)) return absl::AlreadyExistsError(absl::StrCat("client ", from, " shared keys twice"));
  // Exactly one bundle for each advertised neighbour, none for anyone else.
  std::set<uint32_t> expected;
  for (uint32_t j : graph_[from]) {
    if (keys_.count(j)) expected.insert(j);
  }
  std::set<uint32_t> got;
  const size_t bundle_bytes = 8 + 2 * (8 + 8 * ShamirChunks(kSecretBytes)) + kGcmTagBytes;
  for (const EncryptedShare& e : m.shares()) {
    if (e.sender() != from) return absl::InvalidArgumentError(absl::StrCat("client ", from, " sent a share in another's name"));
    if (!expected.count(e.recipient()) || !got.insert(e.recipient()).second) {
      return absl::InvalidArgumentError(absl::StrCat("client ", from, " sent a share to ", e.recipient(),
                                                     ", not one of its advertised neighbours (or twice)"));
    }
    if (e.ciphertext().size() != bundle_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("client ", from, " sent a share of the wrong size"));
    }
  }
  if (got != expected) return absl::InvalidArgumentError(absl::StrCat("client ", from, " did not share with every neighbour"));
  shares_[from].assign(m.shares().begin(), m.shares().end());
  return absl::OkStatus();
}

absl::StatusOr<ServerMessages> SecAggServer::FinishShares() {
  if (state_ != ServerState::kCollectingShares) return absl::FailedPreconditionError("FinishShares out of order");
  stats_.shared = static_cast<uint32_t>(shares_.size());
  if (shares_.size() < params_.threshold()) {
    return Abort(absl::FailedPreconditionError(absl::StrCat(shares_.size(), " clients shared keys, fewer than the threshold ",
                                                            params_.threshold())));
  }
  ServerMessages out;
  for (const auto& [sender, bundles] : shares_) {
    for (const EncryptedShare& e : bundles) {
      if (!shares_.count(e.recipient())) continue;  // recipient dropped
      SharesForward* f = out[e.recipient()].mutable_shares_forward();
      f->set_session_id(session_id_);
      *f->add_shares() = e;
      included_[e.recipient()].insert(sender);
    }
  }
  for (const auto& [id, unused] : shares_) {
    if (!out.count(id)) out[id].mutable_shares_forward()->set_session_id(session_id_);
  }
  sum_.assign(params_.vector_length(), 0);
  state_ = ServerState::kCollectingInputs;
  return out;
}

absl::Status SecAggServer::HandleMaskedInput(const MaskedInput& m) {
  const uint32_t from = m.client_id();
  if (absl::Status s = CheckSender(from, m.session_id(), ServerState::kCollectingInputs); !s.ok()) return s;
  if (!shares_.count(from)) return absl::FailedPreconditionError(absl::StrCat("client ", from, " did not share keys"));
  if (submitted_.count(from)) return absl::AlreadyExistsError(absl::StrCat("client ", from, " sent two masked inputs"));
  const int bits = static_cast<int>(params_.ring_bits());
  absl::StatusOr<std::vector<uint32_t>> y = UnpackBits(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.packed().data()), m.packed().size()),
      params_.vector_length(), bits);
  if (!y.ok()) return absl::InvalidArgumentError(absl::StrCat("masked input of client ", from, ": ", y.status().message()));
  if (absl::Status s = AddInRing(sum_, *y, bits); !s.ok()) return s;
  submitted_.insert(from);
  return absl::OkStatus();
}

absl::StatusOr<ServerMessages> SecAggServer::FinishInputs() {
  if (state_ != ServerState::kCollectingInputs) return absl::FailedPreconditionError("FinishInputs out of order");
  stats_.submitted = static_cast<uint32_t>(submitted_.size());
  if (submitted_.size() < params_.threshold()) {
    return Abort(absl::FailedPreconditionError(absl::StrCat(submitted_.size(), " masked inputs, fewer than the threshold ",
                                                            params_.threshold())));
  }
  ServerMessages out;
  for (uint32_t id : submitted_) {
    UnmaskingRequest* r = out[id].mutable_unmasking_request();
    r->set_session_id(session_id_);
    for (uint32_t s : submitted_) r->add_survivors(s);
  }
  state_ = ServerState::kCollectingUnmasking;
  return out;
}

absl::Status SecAggServer::HandleUnmaskingResponse(const UnmaskingResponse& m) {
  const uint32_t from = m.client_id();
  if (absl::Status s = CheckSender(from, m.session_id(), ServerState::kCollectingUnmasking); !s.ok()) return s;
  if (!submitted_.count(from)) return absl::FailedPreconditionError(absl::StrCat("client ", from, " is not a survivor"));
  if (responded_.count(from)) return absl::AlreadyExistsError(absl::StrCat("client ", from, " answered twice"));
  const size_t chunks = ShamirChunks(kSecretBytes);
  // Validate everything first, then record: a bad response changes nothing.
  std::set<uint32_t> owners;
  for (const RevealedShare& r : m.shares()) {
    const uint32_t owner = r.owner();
    const bool held = owner == from || included_[from].count(owner) > 0;
    if (!held || !owners.insert(owner).second) {
      return absl::InvalidArgumentError(absl::StrCat("client ", from, " revealed a share of client ", owner,
                                                     " that it does not hold (or twice)"));
    }
    const bool survived = submitted_.count(owner) > 0;
    if ((survived && r.kind() != RevealedShare::SELF_MASK_SEED) || (!survived && r.kind() != RevealedShare::MASKING_KEY)) {
      return absl::InvalidArgumentError(absl::StrCat("client ", from, " revealed the wrong kind of share of client ", owner));
    }
    if (r.x() != from || static_cast<size_t>(r.values_size()) != chunks) {
      return absl::InvalidArgumentError(absl::StrCat("client ", from, " revealed a malformed share"));
    }
    for (uint64_t v : r.values()) {
      if (v >= kShamirPrime) return absl::InvalidArgumentError(absl::StrCat("client ", from, " revealed a value outside the field"));
    }
  }
  for (const RevealedShare& r : m.shares()) {
    ShamirShare s{r.x(), std::vector<uint64_t>(r.values().begin(), r.values().end())};
    (r.kind() == RevealedShare::SELF_MASK_SEED ? seed_shares_ : key_shares_)[r.owner()].push_back(std::move(s));
  }
  responded_.insert(from);
  return absl::OkStatus();
}

size_t SecAggServer::MemoryBytes() const {
  size_t bytes = sum_.capacity() * sizeof(uint32_t);
  bytes += keys_.size() * (sizeof(PeerKeys) + 64);
  for (const auto& [id, v] : shares_) {
    for (const EncryptedShare& e : v) bytes += sizeof(EncryptedShare) + e.ciphertext().size();
  }
  for (const auto& [id, s] : included_) bytes += s.size() * 40;
  for (const auto* m : {&seed_shares_, &key_shares_}) {
    for (const auto& [id, v] : *m) bytes += v.size() * (sizeof(ShamirShare) + 8 * ShamirChunks(kSecretBytes));
  }
  return bytes;
}

absl::StatusOr<std::vector<uint32_t>> SecAggServer::Finish() {
  if (state_ != ServerState::kCollectingUnmasking) return absl::FailedPreconditionError("Finish out of order");
  stats_.unmasking_responses = static_cast<uint32_t>(responded_.size());
  const uint32_t t = params_.threshold();
  const int bits = static_cast<int>(params_.ring_bits());
  std::span<const uint8_t> session(reinterpret_cast<const uint8_t*>(session_id_.data()), session_id_.size());
  // Masks to remove: each survivor's self mask (subtract) and, for each
  // client that shared keys but sent no input, the pairwise masks the
  // survivors added with it.
  std::vector<std::pair<Key32, int>> masks;
  for (uint32_t j : submitted_) {
    absl::StatusOr<std::vector<uint8_t>> seed = ShamirReconstruct(seed_shares_[j], t, kSecretBytes);
    if (!seed.ok()) {
      return Abort(absl::Status(seed.status().code(), absl::StrCat("self-mask seed of client ", j, ": ", seed.status().message())));
    }
    Key32 b;
    std::copy(seed->begin(), seed->end(), b.begin());
    absl::StatusOr<Key32> key = SelfMaskKey(b, session);
    if (!key.ok()) return Abort(key.status());
    masks.emplace_back(*key, -1);
  }
  stats_.self_masks_removed = static_cast<uint32_t>(submitted_.size());
  for (const auto& [j, unused] : shares_) {
    if (submitted_.count(j)) continue;
    absl::StatusOr<std::vector<uint8_t>> sk = ShamirReconstruct(key_shares_[j], t, kSecretBytes);
    if (!sk.ok()) {
      return Abort(absl::Status(sk.status().code(), absl::StrCat("masking key of dropped client ", j, ": ", sk.status().message())));
    }
    Key32 priv;
    std::copy(sk->begin(), sk->end(), priv.begin());
    absl::StatusOr<X25519KeyPair> pair = X25519KeyPair::FromPrivate(priv);
    if (!pair.ok()) return Abort(pair.status());
    if (std::string(pair->public_key().begin(), pair->public_key().end()) != keys_[j].masking_key()) {
      return Abort(absl::DataLossError(absl::StrCat("reconstructed masking key of client ", j, " does not match its public key")));
    }
    for (uint32_t i : submitted_) {
      if (!included_[i].count(j)) continue;
      Key32 pk;
      std::copy(keys_[i].masking_key().begin(), keys_[i].masking_key().end(), pk.begin());
      absl::StatusOr<Key32> shared = pair->Agree(pk);
      if (!shared.ok()) return Abort(shared.status());
      absl::StatusOr<Key32> seed = PairwiseMaskSeed(*shared, session);
      if (!seed.ok()) return Abort(seed.status());
      // Survivor i added sign(i, j) PRG(s_ij); remove it.
      masks.emplace_back(*seed, i < j ? -1 : +1);
      ++stats_.pairwise_masks_removed;
    }
  }
  for (size_t start = 0; start < sum_.size(); start += kChunk) {
    std::span<uint32_t> chunk(sum_.data() + start, std::min(kChunk, sum_.size() - start));
    for (const auto& [key, sign] : masks) {
      if (absl::Status s = AddMask(chunk, key, sign, bits, start); !s.ok()) return Abort(s);
    }
  }
  state_ = ServerState::kDone;
  seed_shares_.clear();
  key_shares_.clear();
  return std::move(sum_);
}

}  // namespace fedpers::secagg
