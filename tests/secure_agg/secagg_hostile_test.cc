// Hostile and malformed input to the SecAgg+ state machines: each case ends
// in an error status or a clean abort, never a crash, and the honest run
// still completes where the protocol allows.
#include <gtest/gtest.h>

#include <cmath>

#include "secure_agg/ring_encoding.h"
#include "tests/secure_agg/secagg_harness.h"

namespace fedpers::secagg {
namespace {

using namespace fedpers::v1;
using testing::MakeParams;

// A session driven round by round, with access to every message.
struct Session {
  SecAggParams params;
  SecAggServer server;
  std::map<uint32_t, SecAggClient> clients;
  std::vector<std::vector<uint32_t>> inputs;
  std::map<uint32_t, SecAggClientMessage> last;  // each client's last reply

  explicit Session(SecAggParams p) : params(p), server(*SecAggServer::Create(p)) {
    std::mt19937 gen(p.num_clients());
    inputs.resize(p.num_clients() + 1);
    for (uint32_t i = 1; i <= p.num_clients(); ++i) {
      inputs[i].resize(p.vector_length());
      for (uint32_t& v : inputs[i]) v = gen() & ((1u << p.ring_bits()) - 1);
      clients.emplace(i, *SecAggClient::Create(p, i, inputs[i]));
    }
  }
  void Advertise() {
    for (auto& [id, c] : clients) {
      last[id] = *c.Start();
      ASSERT_TRUE(server.Handle(last[id]).ok());
    }
  }
  // Delivers `out` to the clients and the replies to the server.
  void Deliver(const ServerMessages& out) {
    for (const auto& [id, m] : out) {
      auto reply = clients.at(id).Handle(m);
      ASSERT_TRUE(reply.ok()) << reply.status();
      last[id] = *reply;
      ASSERT_TRUE(server.Handle(*reply).ok());
    }
  }
  std::vector<uint32_t> Expected() const {
    std::vector<uint32_t> sum(params.vector_length(), 0);
    for (uint32_t i : server.survivors()) {
      for (size_t e = 0; e < sum.size(); ++e) sum[e] = (sum[e] + inputs[i][e]) & ((1u << params.ring_bits()) - 1);
    }
    return sum;
  }
};

TEST(SecAggHostileTest, LateDuplicateAndOutOfOrderMessagesAreRefused) {
  Session s(MakeParams(4, 3, 3, 64, 16));
  s.Advertise();
  SecAggClientMessage advert = s.last[1];
  ASSERT_EQ(s.server.Handle(advert).code(), absl::StatusCode::kAlreadyExists) << "duplicate";
  ServerMessages keys = *s.server.FinishKeys();
  EXPECT_EQ(s.server.Handle(advert).code(), absl::StatusCode::kFailedPrecondition) << "late";
  s.Deliver(keys);
  EXPECT_EQ(s.server.Handle(s.last[2]).code(), absl::StatusCode::kAlreadyExists) << "duplicate ShareKeys";
  ServerMessages shares = *s.server.FinishShares();
  EXPECT_EQ(s.server.Handle(s.last[2]).code(), absl::StatusCode::kFailedPrecondition) << "late ShareKeys";
  s.Deliver(shares);
  ServerMessages unmask = *s.server.FinishInputs();
  s.Deliver(unmask);
  auto sum = s.server.Finish();
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, s.Expected());
  // A client that got a message of the wrong round aborts.
  EXPECT_FALSE(s.clients.at(1).Handle(keys.at(1)).ok());
  EXPECT_EQ(s.clients.at(1).state(), ClientState::kAborted);
}

TEST(SecAggHostileTest, MessagesFromAnotherSessionAreRefused) {
  auto p = MakeParams(3, 2, 2, 32, 16);
  Session a(p), b(p);  // same parameters, different keys: different sessions
  a.Advertise();
  b.Advertise();
  ServerMessages ka = *a.server.FinishKeys(), kb = *b.server.FinishKeys();
  a.Deliver(ka);
  // Session a's ShareKeys replayed into session b.
  absl::Status s = b.server.Handle(a.last[1]);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("another session"), absl::string_view::npos) << s;
  // Session a's key broadcast shown to a client of session b.
  auto r = b.clients.at(2).Handle(ka.at(2));
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(b.clients.at(2).state(), ClientState::kAborted);
}

TEST(SecAggHostileTest, MisroutedReflectedAndTamperedSharesAbortTheClient) {
  for (int variant = 0; variant < 4; ++variant) {
    Session s(MakeParams(4, 3, 3, 16, 16));
    s.Advertise();
    s.Deliver(*s.server.FinishKeys());
    ServerMessages shares = *s.server.FinishShares();
    SharesForward* f = shares.at(3).mutable_shares_forward();
    ASSERT_GT(f->shares_size(), 0);
    EncryptedShare* e = f->mutable_shares(0);
    std::string expected;
    if (variant == 0) {
      *f->add_shares() = shares.at(2).shares_forward().shares(0);  // addressed to client 2
      expected = "addressed to another client";
    } else if (variant == 1) {
      e->set_sender(3);  // reflected
      expected = "reflected";
    } else if (variant == 2) {
      std::string c = e->ciphertext();
      c[5] ^= 1;
      e->set_ciphertext(c);
      expected = "does not authenticate";
    } else {
      *f->add_shares() = *e;  // the same share twice
      expected = "two shares";
    }
    auto reply = s.clients.at(3).Handle(shares.at(3));
    ASSERT_FALSE(reply.ok()) << variant;
    EXPECT_NE(reply.status().message().find(expected), absl::string_view::npos) << reply.status();
    EXPECT_EQ(s.clients.at(3).state(), ClientState::kAborted);
    EXPECT_FALSE(s.clients.at(3).Handle(shares.at(3)).ok()) << "an aborted client answers nothing";
  }
}

TEST(SecAggHostileTest, BadKeysAreRefused) {
  Session s(MakeParams(4, 3, 2, 16, 16));
  SecAggClientMessage m = *s.clients.at(1).Start();
  SecAggClientMessage zero = m;
  zero.mutable_advertise_keys()->mutable_keys()->set_masking_key(std::string(32, '\0'));
  EXPECT_FALSE(s.server.Handle(zero).ok());
  SecAggClientMessage short_key = m;
  short_key.mutable_advertise_keys()->mutable_keys()->set_encryption_key("abc");
  EXPECT_FALSE(s.server.Handle(short_key).ok());
  ASSERT_TRUE(s.server.Handle(m).ok());
  SecAggClientMessage copy = *s.clients.at(2).Start();
  *copy.mutable_advertise_keys()->mutable_keys() = m.advertise_keys().keys();
  copy.mutable_advertise_keys()->mutable_keys()->set_client_id(2);
  EXPECT_NE(s.server.Handle(copy).message().find("keys of client 1"), absl::string_view::npos) << "repeated keys";
  SecAggClientMessage unknown = *s.clients.at(3).Start();
  unknown.mutable_advertise_keys()->mutable_keys()->set_client_id(99);
  EXPECT_NE(s.server.Handle(unknown).message().find("unknown client"), absl::string_view::npos);

  // A broadcast that repeats a key, or carries an all-zero key, aborts the client.
  Session t(MakeParams(3, 2, 2, 16, 16));
  t.Advertise();
  ServerMessages keys = *t.server.FinishKeys();
  KeysBroadcast dup = keys.at(1).keys_broadcast();
  dup.mutable_advertised(2)->set_masking_key(dup.advertised(1).masking_key());
  SecAggServerMessage dm;
  *dm.mutable_keys_broadcast() = dup;
  EXPECT_NE(t.clients.at(1).Handle(dm).status().message().find("equal"), absl::string_view::npos);
  KeysBroadcast zk = keys.at(2).keys_broadcast();
  zk.mutable_advertised(0)->set_encryption_key(std::string(32, '\0'));
  SecAggServerMessage zm;
  *zm.mutable_keys_broadcast() = zk;
  EXPECT_NE(t.clients.at(2).Handle(zm).status().message().find("all-zero"), absl::string_view::npos);
  // The server altering the client's own keys, or dropping them.
  KeysBroadcast mine = keys.at(3).keys_broadcast();
  mine.mutable_advertised(2)->set_masking_key(mine.advertised(0).encryption_key() + "");
  SecAggServerMessage mm;
  *mm.mutable_keys_broadcast() = mine;
  EXPECT_FALSE(t.clients.at(3).Handle(mm).ok());
}

TEST(SecAggHostileTest, MalformedSharesAndVectorsChangeNothing) {
  Session s(MakeParams(3, 2, 2, 100, 12));
  s.Advertise();
  ServerMessages keys = *s.server.FinishKeys();
  // Deliver keys by hand so we can tamper with client 1's ShareKeys.
  for (auto& [id, m] : keys) s.last[id] = *s.clients.at(id).Handle(m);
  SecAggClientMessage bad = s.last[1];
  bad.mutable_share_keys()->mutable_shares(0)->set_ciphertext("short");
  EXPECT_NE(s.server.Handle(bad).message().find("wrong size"), absl::string_view::npos);
  bad = s.last[1];
  bad.mutable_share_keys()->mutable_shares()->RemoveLast();
  EXPECT_NE(s.server.Handle(bad).message().find("every neighbour"), absl::string_view::npos);
  bad = s.last[1];
  bad.mutable_share_keys()->mutable_shares(0)->set_recipient(1);
  EXPECT_FALSE(s.server.Handle(bad).ok());
  for (auto& [id, m] : s.last) ASSERT_TRUE(s.server.Handle(m).ok()) << id;
  ServerMessages shares = *s.server.FinishShares();
  for (auto& [id, m] : shares) s.last[id] = *s.clients.at(id).Handle(m);
  SecAggClientMessage vec = s.last[2];
  vec.mutable_masked_input()->set_packed(vec.masked_input().packed().substr(1));
  EXPECT_NE(s.server.Handle(vec).message().find("bytes"), absl::string_view::npos) << "wrong length";
  vec = s.last[2];
  std::string packed = vec.masked_input().packed();
  packed.back() = static_cast<char>(0xff);  // 100 x 12 bits = 150 bytes: no padding, so set high bits of a value
  vec.mutable_masked_input()->set_packed(packed + "x");
  EXPECT_FALSE(s.server.Handle(vec).ok());
  for (auto& [id, m] : s.last) ASSERT_TRUE(s.server.Handle(m).ok()) << id;
  ServerMessages unmask = *s.server.FinishInputs();
  for (auto& [id, m] : unmask) s.last[id] = *s.clients.at(id).Handle(m);
  // An unmasking response revealing a share of the wrong kind, or out of the field.
  SecAggClientMessage wrong = s.last[1];
  wrong.mutable_unmasking_response()->mutable_shares(0)->set_kind(RevealedShare::MASKING_KEY);
  EXPECT_NE(s.server.Handle(wrong).message().find("wrong kind"), absl::string_view::npos);
  wrong = s.last[1];
  wrong.mutable_unmasking_response()->mutable_shares(0)->set_values(0, kShamirPrime);
  EXPECT_FALSE(s.server.Handle(wrong).ok());
  for (auto& [id, m] : s.last) ASSERT_TRUE(s.server.Handle(m).ok()) << id;
  auto sum = s.server.Finish();
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum, s.Expected());
}

// A malicious server first lists client 3 as a survivor (getting shares of
// its self-mask seed), then asks again listing it as dropped (to get shares
// of its masking key, which together would unmask client 3's input). Each
// client answers one unmasking request only.
TEST(SecAggHostileTest, ServerCannotGetBothSharesOfOneClient) {
  Session s(MakeParams(4, 3, 2, 16, 16));
  s.Advertise();
  s.Deliver(*s.server.FinishKeys());
  s.Deliver(*s.server.FinishShares());
  ServerMessages unmask = *s.server.FinishInputs();
  auto first = s.clients.at(1).Handle(unmask.at(1));
  ASSERT_TRUE(first.ok());
  for (const RevealedShare& r : first->unmasking_response().shares()) {
    EXPECT_EQ(r.kind(), RevealedShare::SELF_MASK_SEED);
  }
  SecAggServerMessage second = unmask.at(1);
  second.mutable_unmasking_request()->clear_survivors();
  for (uint32_t id : {1u, 2u, 4u}) second.mutable_unmasking_request()->add_survivors(id);
  auto again = s.clients.at(1).Handle(second);
  EXPECT_FALSE(again.ok());
  // Told that it dropped, or that a client which never shared survived, a
  // client refuses.
  Session t(MakeParams(4, 3, 2, 16, 16));
  t.Advertise();
  t.Deliver(*t.server.FinishKeys());
  t.Deliver(*t.server.FinishShares());
  ServerMessages u = *t.server.FinishInputs();
  SecAggServerMessage not_me = u.at(2);
  not_me.mutable_unmasking_request()->clear_survivors();
  for (uint32_t id : {1u, 3u, 4u}) not_me.mutable_unmasking_request()->add_survivors(id);
  EXPECT_NE(t.clients.at(2).Handle(not_me).status().message().find("dropped"), absl::string_view::npos);
  SecAggServerMessage repeated = u.at(3);
  repeated.mutable_unmasking_request()->add_survivors(3);
  EXPECT_NE(t.clients.at(3).Handle(repeated).status().message().find("repeats"), absl::string_view::npos);
}

// Masked inputs are uniform over the ring whatever the input: a chi-square
// test on one client's masked vector of constant input, 4-bit buckets.
TEST(SecAggHostileTest, MaskedVectorsAreUniform) {
  auto p = MakeParams(3, 2, 2, 160000, 16);
  SecAggServer server = *SecAggServer::Create(p);
  std::map<uint32_t, SecAggClient> clients;
  for (uint32_t i = 1; i <= 3; ++i) {
    clients.emplace(i, *SecAggClient::Create(p, i, std::vector<uint32_t>(p.vector_length(), 12345)));
    ASSERT_TRUE(server.Handle(*clients.at(i).Start()).ok());
  }
  ServerMessages keys = *server.FinishKeys();
  for (auto& [id, m] : keys) ASSERT_TRUE(server.Handle(*clients.at(id).Handle(m)).ok());
  ServerMessages shares = *server.FinishShares();
  auto masked = clients.at(1).Handle(shares.at(1));
  ASSERT_TRUE(masked.ok());
  const std::string& packed = masked->masked_input().packed();
  auto values = UnpackBits({reinterpret_cast<const uint8_t*>(packed.data()), packed.size()}, p.vector_length(), 16);
  ASSERT_TRUE(values.ok());
  std::vector<double> counts(256, 0);
  for (uint32_t v : *values) counts[v >> 8] += 1;
  const double expected = static_cast<double>(values->size()) / 256;
  double chi2 = 0;
  for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
  // 255 degrees of freedom: mean 255, sd 22.6; p = 0.001 critical value is 330.5.
  EXPECT_LT(chi2, 330.5);
  EXPECT_GT(chi2, 190.0) << "suspiciously uniform";
}

}  // namespace
}  // namespace fedpers::secagg
