#include "secure_agg/crypto.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/openssl_util.h"

namespace fedpers::secagg {
namespace {

using CipherCtx = OpenSslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using PKey = OpenSslPtr<EVP_PKEY, EVP_PKEY_free>;
using PKeyCtx = OpenSslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using MdCtx = OpenSslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using Kdf = OpenSslPtr<EVP_KDF, EVP_KDF_free>;
using KdfCtx = OpenSslPtr<EVP_KDF_CTX, EVP_KDF_CTX_free>;

std::string OpenSslError(absl::string_view what) { return OpenSslErrorText(what); }

absl::Status Fail(absl::string_view what) { return absl::InternalError(OpenSslError(what)); }

const EVP_CIPHER* GcmCipher(size_t key_len) {
  if (key_len == 16) return EVP_aes_128_gcm();
  if (key_len == 32) return EVP_aes_256_gcm();
  return nullptr;
}

int IntLen(size_t n) { return n > static_cast<size_t>(INT32_MAX) ? -1 : static_cast<int>(n); }

}  // namespace

absl::Status SecureRandomBytes(std::span<uint8_t> out) {
  // RAND_bytes takes an int length: fill in chunks.
  size_t done = 0;
  while (done < out.size()) {
    const size_t n = std::min<size_t>(out.size() - done, 1 << 30);
    if (RAND_bytes(out.data() + done, static_cast<int>(n)) != 1) return Fail("RAND_bytes failed");
    done += n;
  }
  return absl::OkStatus();
}

absl::StatusOr<Key32> RandomKey32() {
  Key32 k{};
  if (absl::Status s = SecureRandomBytes(k); !s.ok()) return s;
  return k;
}

Digest32 Sha256(std::initializer_list<std::span<const uint8_t>> parts) {
  Digest32 out{};
  MdCtx ctx(EVP_MD_CTX_new());
  unsigned int len = 0;
  // SHA-256 cannot fail on valid inputs; a failure here is a broken
  // OpenSSL, reported as an all-zero digest that no protocol check accepts.
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return Digest32{};
  for (auto p : parts) {
    if (EVP_DigestUpdate(ctx.get(), p.data(), p.size()) != 1) return Digest32{};
  }
  if (EVP_DigestFinal_ex(ctx.get(), out.data(), &len) != 1 || len != 32) return Digest32{};
  return out;
}

absl::StatusOr<Bytes> HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                                 std::span<const uint8_t> info, size_t length) {
  if (length == 0 || length > 255 * 32) {
    return absl::InvalidArgumentError(absl::StrCat("HKDF output length ", length, " is outside [1, 8160]"));
  }
  Kdf kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) return Fail("HKDF unavailable");
  KdfCtx ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return Fail("EVP_KDF_CTX_new failed");
  char digest[] = "SHA256";
  OSSL_PARAM params[5];
  int n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm.data()), ikm.size());
  if (!salt.empty()) {
    params[n++] =
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size());
  }
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(info.data()), info.size());
  params[n] = OSSL_PARAM_construct_end();
  Bytes out(length);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) return Fail("HKDF derive failed");
  return out;
}

absl::StatusOr<X25519KeyPair> X25519KeyPair::Generate() {
  absl::StatusOr<Key32> priv = RandomKey32();
  if (!priv.ok()) return priv.status();
  return FromPrivate(*priv);
}

absl::StatusOr<X25519KeyPair> X25519KeyPair::FromPrivate(const Key32& private_key) {
  PKey key(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_key.data(), private_key.size()));
  if (!key) return Fail("X25519 private key rejected");
  X25519KeyPair pair;
  pair.private_ = private_key;
  size_t len = pair.public_.size();
  if (EVP_PKEY_get_raw_public_key(key.get(), pair.public_.data(), &len) != 1 || len != 32) {
    return Fail("X25519 public key derivation failed");
  }
  return pair;
}

absl::StatusOr<Key32> X25519KeyPair::Agree(const Key32& peer_public) const {
  PKey mine(EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nullptr, private_.data(), private_.size()));
  PKey peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, peer_public.data(), peer_public.size()));
  if (!mine || !peer) return Fail("X25519 key import failed");
  PKeyCtx ctx(EVP_PKEY_CTX_new(mine.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1) return Fail("X25519 derive init failed");
  if (EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError("X25519: peer public key rejected");
  }
  Key32 shared{};
  size_t len = shared.size();
  if (EVP_PKEY_derive(ctx.get(), shared.data(), &len) != 1 || len != 32) {
    // OpenSSL refuses an all-zero result: the peer key has small order.
    ERR_clear_error();
    return absl::InvalidArgumentError("X25519: peer public key has small order (all-zero shared secret)");
  }
  return shared;
}

absl::StatusOr<Bytes> AesGcmSeal(std::span<const uint8_t> key, std::span<const uint8_t> nonce,
                                 std::span<const uint8_t> plaintext, std::span<const uint8_t> aad) {
  const EVP_CIPHER* cipher = GcmCipher(key.size());
  if (cipher == nullptr) return absl::InvalidArgumentError("AES-GCM key must be 16 or 32 bytes");
  if (nonce.size() != kGcmNonceBytes) return absl::InvalidArgumentError("AES-GCM nonce must be 12 bytes");
  if (IntLen(plaintext.size()) < 0 || IntLen(aad.size()) < 0) {
    return absl::InvalidArgumentError("AES-GCM input too large");
  }
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), cipher, nullptr, key.data(), nonce.data()) != 1) {
    return Fail("AES-GCM init failed");
  }
  int len = 0;
  if (!aad.empty() && EVP_EncryptUpdate(ctx.get(), nullptr, &len, aad.data(), IntLen(aad.size())) != 1) {
    return Fail("AES-GCM AAD failed");
  }
  Bytes out(plaintext.size() + kGcmTagBytes);
  if (!plaintext.empty() &&
      EVP_EncryptUpdate(ctx.get(), out.data(), &len, plaintext.data(), IntLen(plaintext.size())) != 1) {
    return Fail("AES-GCM encrypt failed");
  }
  if (EVP_EncryptFinal_ex(ctx.get(), out.data() + plaintext.size(), &len) != 1) return Fail("AES-GCM final failed");
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagBytes, out.data() + plaintext.size()) != 1) {
    return Fail("AES-GCM tag failed");
  }
  return out;
}

absl::StatusOr<Bytes> AesGcmOpen(std::span<const uint8_t> key, std::span<const uint8_t> nonce,
                                 std::span<const uint8_t> sealed, std::span<const uint8_t> aad) {
  const EVP_CIPHER* cipher = GcmCipher(key.size());
  if (cipher == nullptr) return absl::InvalidArgumentError("AES-GCM key must be 16 or 32 bytes");
  if (nonce.size() != kGcmNonceBytes) return absl::InvalidArgumentError("AES-GCM nonce must be 12 bytes");
  if (sealed.size() < kGcmTagBytes) return absl::InvalidArgumentError("AES-GCM ciphertext shorter than its tag");
  if (IntLen(sealed.size()) < 0 || IntLen(aad.size()) < 0) return absl::InvalidArgumentError("AES-GCM input too large");
  const size_t n = sealed.size() - kGcmTagBytes;
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), cipher, nullptr, key.data(), nonce.data()) != 1) {
    return Fail("AES-GCM init failed");
  }
  int len = 0;
  if (!aad.empty() && EVP_DecryptUpdate(ctx.get(), nullptr, &len, aad.data(), IntLen(aad.size())) != 1) {
    return Fail("AES-GCM AAD failed");
  }
  Bytes out(n);
  if (n > 0 && EVP_DecryptUpdate(ctx.get(), out.data(), &len, sealed.data(), IntLen(n)) != 1) {
    return Fail("AES-GCM decrypt failed");
  }
  Bytes tag(sealed.begin() + static_cast<std::ptrdiff_t>(n), sealed.end());
  if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagBytes, tag.data()) != 1) {
    return Fail("AES-GCM tag set failed");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), out.data() + n, &len) != 1) {
    ERR_clear_error();
    return absl::PermissionDeniedError("AES-GCM authentication failed");
  }
  return out;
}

absl::StatusOr<AesCtrPrg> AesCtrPrg::Create(std::span<const uint8_t> key,
                                            const std::array<uint8_t, 16>& initial_counter) {
  if (key.size() != 32) return absl::InvalidArgumentError("AES-256-CTR key must be 32 bytes");
  AesCtrPrg prg;
  std::memcpy(prg.key_.data(), key.data(), 32);
  prg.counter0_ = initial_counter;
  return prg;
}

absl::Status AesCtrPrg::Generate(uint64_t first_block, std::span<uint8_t> out) const {
  std::memset(out.data(), 0, out.size());
  return Xor(first_block, out);
}

absl::Status AesCtrPrg::Xor(uint64_t first_block, std::span<uint8_t> data) const {
  // Counter block of `first_block`: counter0 + first_block (128-bit, big-endian).
  std::array<uint8_t, 16> iv = counter0_;
  uint64_t carry = first_block;
  for (int i = 15; i >= 0 && carry != 0; --i) {
    const uint64_t sum = iv[i] + (carry & 0xff);
    iv[i] = static_cast<uint8_t>(sum);
    carry = (carry >> 8) + (sum >> 8);
  }
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ctr(), nullptr, key_.data(), iv.data()) != 1) {
    return Fail("AES-256-CTR init failed");
  }
  size_t done = 0;
  while (done < data.size()) {
    const int n = static_cast<int>(std::min<size_t>(data.size() - done, 1 << 30));
    int len = 0;
    if (EVP_EncryptUpdate(ctx.get(), data.data() + done, &len, data.data() + done, n) != 1 || len != n) {
      return Fail("AES-256-CTR failed");
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string ToHex(std::span<const uint8_t> bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

absl::StatusOr<Bytes> FromHex(absl::string_view hex) {
  if (hex.size() % 2 != 0) return absl::InvalidArgumentError("hex string of odd length");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Bytes out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return absl::InvalidArgumentError("invalid hex digit");
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return out;
}

}  // namespace fedpers::secagg
