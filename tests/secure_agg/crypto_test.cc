// Known answers from ../shared/reference/test-vectors.md (RFC 7748, RFC 5869,
// McGrew-Viega GCM, NIST SP 800-38A).
#include "secure_agg/crypto.h"

#include <gtest/gtest.h>

namespace fedpers::secagg {
namespace {

Bytes Hex(absl::string_view h) { return *FromHex(h); }

Key32 Key(absl::string_view h) {
  Bytes b = Hex(h);
  Key32 k{};
  std::copy(b.begin(), b.end(), k.begin());
  return k;
}

TEST(X25519Test, Rfc7748AliceAndBob) {
  auto alice = X25519KeyPair::FromPrivate(Key("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"));
  auto bob = X25519KeyPair::FromPrivate(Key("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"));
  ASSERT_TRUE(alice.ok() && bob.ok());
  EXPECT_EQ(ToHex(alice->public_key()), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  EXPECT_EQ(ToHex(bob->public_key()), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  const std::string shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
  EXPECT_EQ(ToHex(*alice->Agree(bob->public_key())), shared);
  EXPECT_EQ(ToHex(*bob->Agree(alice->public_key())), shared);
}

TEST(X25519Test, Rfc7748Section52Vector1) {
  auto k = X25519KeyPair::FromPrivate(Key("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"));
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(ToHex(*k->Agree(Key("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"))),
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552");
}

TEST(X25519Test, Rfc7748Iterated) {
  Key32 k{}, u{};
  k[0] = 9;
  u[0] = 9;
  for (int i = 1; i <= 1000; ++i) {
    absl::StatusOr<Key32> next = X25519KeyPair::FromPrivate(k)->Agree(u);
    ASSERT_TRUE(next.ok()) << i;
    u = k;
    k = *next;
    if (i == 1) {
      EXPECT_EQ(ToHex(k), "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079");
    }
  }
  EXPECT_EQ(ToHex(k), "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51");
}

TEST(X25519Test, AllZeroPeerKeyFailsCleanly) {
  auto mine = X25519KeyPair::Generate();
  ASSERT_TRUE(mine.ok());
  absl::StatusOr<Key32> r = mine->Agree(Key32{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("small order"), absl::string_view::npos);
  auto other = X25519KeyPair::Generate();
  EXPECT_NE(mine->public_key(), other->public_key());
  EXPECT_EQ(*mine->Agree(other->public_key()), *other->Agree(mine->public_key()));
}

TEST(HkdfTest, Rfc5869) {
  Bytes ikm(22, 0x0b);
  EXPECT_EQ(ToHex(*HkdfSha256(ikm, Hex("000102030405060708090a0b0c"), Hex("f0f1f2f3f4f5f6f7f8f9"), 42)),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
  EXPECT_EQ(ToHex(*HkdfSha256(ikm, {}, {}, 42)),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
  EXPECT_FALSE(HkdfSha256(ikm, {}, {}, 0).ok());
  EXPECT_FALSE(HkdfSha256(ikm, {}, {}, 255 * 32 + 1).ok());
}

TEST(AesGcmTest, McGrewViegaVectors) {
  Bytes iv(12, 0), k128(16, 0), k256(32, 0), zeros(16, 0);
  EXPECT_EQ(ToHex(*AesGcmSeal(k128, iv, {}, {})), "58e2fccefa7e3061367f1d57a4e7455a");
  EXPECT_EQ(ToHex(*AesGcmSeal(k128, iv, zeros, {})),
            "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf");
  EXPECT_EQ(ToHex(*AesGcmSeal(k256, iv, {}, {})), "530f8afbc74536b9a963b4f1c4cb738b");
  EXPECT_EQ(ToHex(*AesGcmSeal(k256, iv, zeros, {})),
            "cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919");
}

TEST(AesGcmTest, OpenRejectsAnyChange) {
  Key32 key = *RandomKey32();
  Bytes nonce(12, 7), msg = {1, 2, 3, 4, 5}, aad = {9, 9};
  Bytes sealed = *AesGcmSeal(key, nonce, msg, aad);
  EXPECT_EQ(*AesGcmOpen(key, nonce, sealed, aad), msg);
  Bytes flipped = sealed;
  flipped[2] ^= 1;
  EXPECT_EQ(AesGcmOpen(key, nonce, flipped, aad).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(AesGcmOpen(key, nonce, sealed, Bytes{9, 8}).ok()) << "other associated data";
  Bytes other_nonce(12, 8);
  EXPECT_FALSE(AesGcmOpen(key, other_nonce, sealed, aad).ok());
  EXPECT_FALSE(AesGcmOpen(key, nonce, Bytes(5, 0), aad).ok()) << "shorter than a tag";
  EXPECT_FALSE(AesGcmSeal(Bytes(20, 0), nonce, msg, aad).ok()) << "bad key length";
  EXPECT_FALSE(AesGcmSeal(key, Bytes(8, 0), msg, aad).ok()) << "bad nonce length";
}

TEST(AesCtrPrgTest, KnownAnswers) {
  auto zero = AesCtrPrg::Create(Bytes(32, 0));
  ASSERT_TRUE(zero.ok());
  Bytes stream(32);
  ASSERT_TRUE(zero->Generate(0, stream).ok());
  EXPECT_EQ(ToHex(stream), "dc95c078a2408989ad48a21492842087530f8afbc74536b9a963b4f1c4cb738b");
  // NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt), block 1.
  std::array<uint8_t, 16> counter;
  Bytes c = Hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
  std::copy(c.begin(), c.end(), counter.begin());
  auto nist = AesCtrPrg::Create(Hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"), counter);
  ASSERT_TRUE(nist.ok());
  Bytes block = Hex("6bc1bee22e409f96e93d7e117393172a");
  ASSERT_TRUE(nist->Xor(0, block).ok());
  EXPECT_EQ(ToHex(block), "601ec313775789a5b7a7f504bbf3d228");
}

TEST(AesCtrPrgTest, RandomAccessMatchesSequential) {
  auto prg = AesCtrPrg::Create(*RandomKey32());
  Bytes whole(16 * 100);
  ASSERT_TRUE(prg->Generate(0, whole).ok());
  for (uint64_t first : {0ull, 1ull, 37ull, 99ull}) {
    Bytes part(16 * (100 - first));
    ASSERT_TRUE(prg->Generate(first, part).ok());
    EXPECT_TRUE(std::equal(part.begin(), part.end(), whole.begin() + 16 * first)) << first;
  }
  // The 128-bit counter carries across 64-bit boundaries.
  std::array<uint8_t, 16> high{};
  for (int i = 8; i < 16; ++i) high[i] = 0xff;
  auto wrap = AesCtrPrg::Create(Bytes(32, 1), high);
  std::array<uint8_t, 16> next{};
  next[7] = 1;
  auto after = AesCtrPrg::Create(Bytes(32, 1), next);
  Bytes a(32), b(16);
  ASSERT_TRUE(wrap->Generate(0, a).ok());
  ASSERT_TRUE(after->Generate(0, b).ok());
  EXPECT_TRUE(std::equal(b.begin(), b.end(), a.begin() + 16));
  EXPECT_FALSE(AesCtrPrg::Create(Bytes(16, 0)).ok());
}

TEST(Sha256Test, KnownAnswer) {
  const std::string abc = "abc";
  EXPECT_EQ(ToHex(Sha256({std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(abc.data()), 3)})),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace fedpers::secagg
