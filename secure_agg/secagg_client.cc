#include "secure_agg/secagg_client.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "secure_agg/ring_encoding.h"

namespace fedpers::secagg {
namespace {

using namespace fedpers::v1;

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string ToString(std::span<const uint8_t> b) { return std::string(b.begin(), b.end()); }

absl::StatusOr<Key32> ToKey(const std::string& s, absl::string_view what) {
  if (s.size() != 32) return absl::InvalidArgumentError(absl::StrCat(what, " is ", s.size(), " bytes, not 32"));
  Key32 k{};
  std::copy(s.begin(), s.end(), k.begin());
  return k;
}

constexpr size_t kChunk = 1 << 14;  // elements per mask-expansion chunk (multiple of 16)

}  // namespace

absl::StatusOr<SecAggClient> SecAggClient::Create(SecAggParams params, uint32_t client_id, std::vector<uint32_t> input) {
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  if (client_id < 1 || client_id > params.num_clients()) {
    return absl::InvalidArgumentError(absl::StrCat("SecAgg client id ", client_id, " not in [1, ", params.num_clients(), "]"));
  }
  SecAggClient c;
  c.params_ = std::move(params);
  c.id_ = client_id;
  if (!input.empty()) {
    if (absl::Status s = c.SetInput(std::move(input)); !s.ok()) return s;
  }
  return c;
}

absl::Status SecAggClient::SetInput(std::vector<uint32_t> input) {
  if (state_ == ClientState::kAwaitingUnmasking || state_ == ClientState::kDone || state_ == ClientState::kAborted) {
    return absl::FailedPreconditionError("SecAgg input set after the masked-input round");
  }
  if (input.size() != params_.vector_length()) {
    return absl::InvalidArgumentError(absl::StrCat("SecAgg input has ", input.size(), " values, the session needs ",
                                                   params_.vector_length()));
  }
  const uint64_t limit = uint64_t{1} << params_.ring_bits();
  for (uint32_t v : input) {
    if (v >= limit) return absl::InvalidArgumentError("SecAgg input holds a value outside the ring");
  }
  input_ = std::move(input);
  has_input_ = true;
  return absl::OkStatus();
}

absl::Status SecAggClient::Abort(absl::Status why) {
  state_ = ClientState::kAborted;
  abort_status_ = absl::Status(why.code(), absl::StrCat("SecAgg client ", id_, " aborted: ", why.message()));
  // Forget every secret.
  encryption_keys_.reset();
  masking_keys_.reset();
  self_seed_.fill(0);
  held_.clear();
  own_seed_share_ = ShamirShare();
  std::fill(input_.begin(), input_.end(), 0);
  return abort_status_;
}

absl::StatusOr<SecAggClientMessage> SecAggClient::Start() {
  if (state_ != ClientState::kNew) return Abort(absl::FailedPreconditionError("Start() called twice"));
  absl::StatusOr<X25519KeyPair> c = X25519KeyPair::Generate(), s = X25519KeyPair::Generate();
  if (!c.ok()) return Abort(c.status());
  if (!s.ok()) return Abort(s.status());
  encryption_keys_ = *c;
  masking_keys_ = *s;
  SecAggClientMessage out;
  PeerKeys* keys = out.mutable_advertise_keys()->mutable_keys();
  keys->set_client_id(id_);
  keys->set_encryption_key(ToString(c->public_key()));
  keys->set_masking_key(ToString(s->public_key()));
  state_ = ClientState::kAwaitingKeys;
  return out;
}

absl::StatusOr<SecAggClientMessage> SecAggClient::Handle(const SecAggServerMessage& message) {
  switch (state_) {
    case ClientState::kAborted:
      return abort_status_;
    case ClientState::kAwaitingKeys:
      if (message.has_keys_broadcast()) return HandleKeys(message.keys_broadcast());
      break;
    case ClientState::kAwaitingShares:
      if (message.has_shares_forward()) return HandleShares(message.shares_forward());
      break;
    case ClientState::kAwaitingUnmasking:
      if (message.has_unmasking_request()) return HandleUnmasking(message.unmasking_request());
      break;
    default:
      break;
  }
  return Abort(absl::FailedPreconditionError("server message out of order for this round"));
}

absl::StatusOr<SecAggClientMessage> SecAggClient::HandleKeys(const KeysBroadcast& m) {
  // Check the advertised list: sorted, unique, in range, well-formed and
  // pairwise distinct keys, mine included unaltered.
  std::vector<PeerKeys> advertised(m.advertised().begin(), m.advertised().end());
  std::set<std::string> seen_keys;
  uint32_t previous = 0;
  bool found_me = false;
  static const std::string kZero(32, '\0');
  for (const PeerKeys& k : advertised) {
    if (k.client_id() <= previous || k.client_id() > params_.num_clients()) {
      return Abort(absl::InvalidArgumentError("advertised keys are not sorted by distinct client ids in [1, n]"));
    }
    previous = k.client_id();
    if (k.encryption_key().size() != 32 || k.masking_key().size() != 32) {
      return Abort(absl::InvalidArgumentError(absl::StrCat("client ", k.client_id(), " advertised a malformed key")));
    }
    if (k.encryption_key() == kZero || k.masking_key() == kZero) {
      return Abort(absl::InvalidArgumentError(absl::StrCat("client ", k.client_id(), " advertised an all-zero key")));
    }
    if (!seen_keys.insert(k.encryption_key()).second || !seen_keys.insert(k.masking_key()).second) {
      return Abort(absl::InvalidArgumentError("two advertised public keys are equal (replayed or reflected keys)"));
    }
    if (k.client_id() == id_) {
      found_me = k.encryption_key() == ToString(encryption_keys_->public_key()) &&
                 k.masking_key() == ToString(masking_keys_->public_key());
      if (!found_me) return Abort(absl::InvalidArgumentError("the server altered this client's own keys"));
    }
  }
  if (!found_me) return Abort(absl::InvalidArgumentError("this client's keys are missing from the broadcast"));
  const Digest32 session = SessionId(params_, advertised);
  if (m.session_id() != ToString(session)) {
    return Abort(absl::InvalidArgumentError("session id does not match the parameters and advertised keys"));
  }
  session_id_.assign(session.begin(), session.end());
  neighbours_ = Neighbours(params_, id_);
  for (const PeerKeys& k : advertised) {
    if (std::binary_search(neighbours_.begin(), neighbours_.end(), k.client_id())) peer_keys_[k.client_id()] = k;
  }
  if (peer_keys_.size() + 1 < params_.threshold()) {
    return Abort(absl::FailedPreconditionError(absl::StrCat(
        "only ", peer_keys_.size(), " neighbours advertised keys; with this client that is fewer than the threshold ",
        params_.threshold())));
  }
  // Share the masking private key and a fresh self-mask seed among the
  // neighbours that advertised, at their ids.
  absl::StatusOr<Key32> seed = RandomKey32();
  if (!seed.ok()) return Abort(seed.status());
  self_seed_ = *seed;
  // Points: every advertised neighbour, then this client (it keeps its own
  // share, as in Bonawitz et al., so that t survivors suffice).
  std::vector<uint32_t> xs;
  for (const auto& [id, k] : peer_keys_) xs.push_back(id);
  xs.push_back(id_);
  absl::StatusOr<std::vector<ShamirShare>> key_shares =
      ShamirSplitAt(masking_keys_->private_key(), params_.threshold(), xs);
  absl::StatusOr<std::vector<ShamirShare>> seed_shares = ShamirSplitAt(self_seed_, params_.threshold(), xs);
  if (!key_shares.ok()) return Abort(key_shares.status());
  if (!seed_shares.ok()) return Abort(seed_shares.status());
  SecAggClientMessage out;
  ShareKeys* sk = out.mutable_share_keys();
  sk->set_session_id(ToString(session_id_));
  sk->set_client_id(id_);
  size_t i = 0;
  for (const auto& [peer, keys] : peer_keys_) {
    absl::StatusOr<Key32> peer_pk = ToKey(keys.encryption_key(), "encryption key");
    absl::StatusOr<Key32> shared = peer_pk.ok() ? encryption_keys_->Agree(*peer_pk) : peer_pk.status();
    if (!shared.ok()) return Abort(shared.status());
    absl::StatusOr<Key32> channel = ChannelKey(*shared, session_id_);
    if (!channel.ok()) return Abort(channel.status());
    ShareBundle bundle{id_, peer, (*key_shares)[i], (*seed_shares)[i]};
    ++i;
    absl::StatusOr<Bytes> sealed =
        AesGcmSeal(*channel, ShareNonce(id_, peer), SerializeBundle(bundle), ShareAad(session_id_, id_, peer));
    if (!sealed.ok()) return Abort(sealed.status());
    EncryptedShare* e = sk->add_shares();
    e->set_sender(id_);
    e->set_recipient(peer);
    e->set_ciphertext(ToString(*sealed));
  }
  own_seed_share_ = (*seed_shares)[i];
  state_ = ClientState::kAwaitingShares;
  return out;
}

absl::StatusOr<SecAggClientMessage> SecAggClient::HandleShares(const SharesForward& m) {
  if (!has_input_) return Abort(absl::FailedPreconditionError("no input was set before the masked-input round"));
  if (m.session_id() != ToString(session_id_)) {
    return Abort(absl::InvalidArgumentError("shares from another session"));
  }
  for (const EncryptedShare& e : m.shares()) {
    const uint32_t from = e.sender();
    if (e.recipient() != id_) return Abort(absl::InvalidArgumentError("a share addressed to another client"));
    if (from == id_) return Abort(absl::InvalidArgumentError("a share reflected back to its sender"));
    auto keys = peer_keys_.find(from);
    if (keys == peer_keys_.end()) {
      return Abort(absl::InvalidArgumentError(absl::StrCat("a share from client ", from, ", not an advertised neighbour")));
    }
    if (held_.count(from)) return Abort(absl::InvalidArgumentError(absl::StrCat("two shares from client ", from)));
    absl::StatusOr<Key32> peer_pk = ToKey(keys->second.encryption_key(), "encryption key");
    absl::StatusOr<Key32> shared = peer_pk.ok() ? encryption_keys_->Agree(*peer_pk) : peer_pk.status();
    if (!shared.ok()) return Abort(shared.status());
    absl::StatusOr<Key32> channel = ChannelKey(*shared, session_id_);
    if (!channel.ok()) return Abort(channel.status());
    absl::StatusOr<Bytes> plain =
        AesGcmOpen(*channel, ShareNonce(from, id_), AsBytes(e.ciphertext()), ShareAad(session_id_, from, id_));
    if (!plain.ok()) {
      return Abort(absl::InvalidArgumentError(absl::StrCat("the share from client ", from, " does not authenticate")));
    }
    absl::StatusOr<ShareBundle> bundle = ParseBundle(*plain);
    if (!bundle.ok()) return Abort(bundle.status());
    if (bundle->sender != from || bundle->recipient != id_ || bundle->key_share.x != id_ ||
        bundle->seed_share.x != id_) {
      return Abort(absl::InvalidArgumentError(absl::StrCat("the share from client ", from, " is misrouted")));
    }
    held_[from] = *bundle;
  }
  if (held_.size() + 1 < params_.threshold()) {
    return Abort(absl::FailedPreconditionError(absl::StrCat("only ", held_.size(), " neighbours shared keys")));
  }
  // y = x + PRG(b) + sum over neighbours j that shared of sign(i, j) PRG(s_ij).
  std::vector<std::pair<Key32, int>> masks;
  absl::StatusOr<Key32> self = SelfMaskKey(self_seed_, session_id_);
  if (!self.ok()) return Abort(self.status());
  masks.emplace_back(*self, +1);
  for (const auto& [peer, bundle] : held_) {
    absl::StatusOr<Key32> pk = ToKey(peer_keys_[peer].masking_key(), "masking key");
    absl::StatusOr<Key32> shared = pk.ok() ? masking_keys_->Agree(*pk) : pk.status();
    if (!shared.ok()) return Abort(shared.status());
    absl::StatusOr<Key32> seed = PairwiseMaskSeed(*shared, session_id_);
    if (!seed.ok()) return Abort(seed.status());
    masks.emplace_back(*seed, id_ < peer ? +1 : -1);
  }
  std::vector<uint32_t> y = std::move(input_);
  std::vector<uint32_t>().swap(input_);
  const int bits = static_cast<int>(params_.ring_bits());
  for (size_t start = 0; start < y.size(); start += kChunk) {
    std::span<uint32_t> chunk(y.data() + start, std::min(kChunk, y.size() - start));
    for (const auto& [key, sign] : masks) {
      if (absl::Status s = AddMask(chunk, key, sign, bits, start); !s.ok()) return Abort(s);
    }
  }
  SecAggClientMessage out;
  MaskedInput* mi = out.mutable_masked_input();
  mi->set_session_id(ToString(session_id_));
  mi->set_client_id(id_);
  mi->set_packed(ToString(PackBits(y, bits)));
  state_ = ClientState::kAwaitingUnmasking;
  return out;
}

absl::StatusOr<SecAggClientMessage> SecAggClient::HandleUnmasking(const UnmaskingRequest& m) {
  if (m.session_id() != ToString(session_id_)) return Abort(absl::InvalidArgumentError("unmasking request from another session"));
  std::set<uint32_t> survivors;
  for (uint32_t s : m.survivors()) {
    if (!survivors.insert(s).second) return Abort(absl::InvalidArgumentError("survivor list repeats a client"));
    if (s < 1 || s > params_.num_clients()) return Abort(absl::InvalidArgumentError("survivor id out of range"));
  }
  if (!survivors.count(id_)) return Abort(absl::InvalidArgumentError("the server lists this client as dropped"));
  if (survivors.size() < params_.threshold()) {
    return Abort(absl::FailedPreconditionError(absl::StrCat(survivors.size(), " survivors, fewer than the threshold ",
                                                            params_.threshold())));
  }
  // Survivors must have shared keys in round 1: a client that never shared
  // cannot have sent a masked input.
  for (uint32_t s : survivors) {
    if (s != id_ && std::binary_search(neighbours_.begin(), neighbours_.end(), s) && !held_.count(s)) {
      return Abort(absl::InvalidArgumentError(absl::StrCat("client ", s, " is listed as a survivor but never shared keys")));
    }
  }
  // For each neighbour that shared: its self-mask seed share if it survived,
  // its masking-key share if it dropped. Never both: one request per session.
  SecAggClientMessage out;
  UnmaskingResponse* r = out.mutable_unmasking_response();
  r->set_session_id(ToString(session_id_));
  r->set_client_id(id_);
  RevealedShare* own = r->add_shares();
  own->set_owner(id_);
  own->set_kind(RevealedShare::SELF_MASK_SEED);
  own->set_x(own_seed_share_.x);
  for (uint64_t v : own_seed_share_.y) own->add_values(v);
  for (const auto& [peer, bundle] : held_) {
    RevealedShare* rs = r->add_shares();
    rs->set_owner(peer);
    const bool survived = survivors.count(peer) > 0;
    const ShamirShare& share = survived ? bundle.seed_share : bundle.key_share;
    rs->set_kind(survived ? RevealedShare::SELF_MASK_SEED : RevealedShare::MASKING_KEY);
    rs->set_x(share.x);
    for (uint64_t v : share.y) rs->add_values(v);
  }
  held_.clear();
  own_seed_share_ = ShamirShare();
  self_seed_.fill(0);
  encryption_keys_.reset();
  masking_keys_.reset();
  state_ = ClientState::kDone;
  return out;
}

}  // namespace fedpers::secagg
