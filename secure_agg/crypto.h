// Cryptographic primitives over OpenSSL 3 EVP, for secure aggregation.
//
// Every OpenSSL object lives in an RAII handle; every failure comes back as a
// Status, never an abort. Keys and secrets are byte arrays the caller owns;
// functions here keep no state between calls and are thread-safe.
#ifndef FEDPERS_SECURE_AGG_CRYPTO_H_
#define FEDPERS_SECURE_AGG_CRYPTO_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fedpers::secagg {

using Bytes = std::vector<uint8_t>;
using Key32 = std::array<uint8_t, 32>;
using Digest32 = std::array<uint8_t, 32>;

// Fills `out` from OpenSSL's CSPRNG (RAND_bytes). Internal on failure.
absl::Status SecureRandomBytes(std::span<uint8_t> out);
// A fresh 32-byte secret from the CSPRNG.
absl::StatusOr<Key32> RandomKey32();

// SHA-256 of the concatenation of `parts`.
Digest32 Sha256(std::initializer_list<std::span<const uint8_t>> parts);

// HKDF-SHA256 (RFC 5869): `length` bytes (at most 255 * 32) from `ikm`,
// `salt` (empty: no salt) and `info`.
absl::StatusOr<Bytes> HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                                 std::span<const uint8_t> info, size_t length);

// X25519 key pair. Holds the private key; copyable value type.
class X25519KeyPair {
 public:
  // A new key pair from the CSPRNG.
  static absl::StatusOr<X25519KeyPair> Generate();
  // From a 32-byte private scalar (clamped by X25519 itself).
  static absl::StatusOr<X25519KeyPair> FromPrivate(const Key32& private_key);

  const Key32& public_key() const { return public_; }
  const Key32& private_key() const { return private_; }

  // The X25519 shared secret with `peer_public`. InvalidArgument for a
  // low-order peer key (an all-zero shared secret, e.g. the all-zero key).
  absl::StatusOr<Key32> Agree(const Key32& peer_public) const;

 private:
  Key32 private_{}, public_{};
};

inline constexpr size_t kGcmNonceBytes = 12;
inline constexpr size_t kGcmTagBytes = 16;

// AES-GCM with a 16- or 32-byte key and a 12-byte nonce. Returns
// ciphertext || 16-byte tag.
absl::StatusOr<Bytes> AesGcmSeal(std::span<const uint8_t> key, std::span<const uint8_t> nonce,
                                 std::span<const uint8_t> plaintext, std::span<const uint8_t> aad);
// Inverse of AesGcmSeal. Unauthenticated: a wrong key, nonce, AAD or any
// changed byte gives the same error, which reveals nothing else.
absl::StatusOr<Bytes> AesGcmOpen(std::span<const uint8_t> key, std::span<const uint8_t> nonce,
                                 std::span<const uint8_t> sealed, std::span<const uint8_t> aad);

// AES-256-CTR keystream as a pseudo-random generator with random access:
// block i of the stream is AES_k(counter0 + i) with a 128-bit big-endian
// counter, so chunks of a long stream can be produced independently (and in
// parallel). Immutable after creation; thread-safe.
class AesCtrPrg {
 public:
  // `key` 32 bytes; `initial_counter` the counter block of block 0 (default
  // all zero).
  static absl::StatusOr<AesCtrPrg> Create(std::span<const uint8_t> key,
                                          const std::array<uint8_t, 16>& initial_counter = {});

  // Writes keystream bytes [16 * first_block, 16 * first_block + out.size()).
  absl::Status Generate(uint64_t first_block, std::span<uint8_t> out) const;
  // XORs the keystream from `first_block` on into `data` (CTR encryption).
  absl::Status Xor(uint64_t first_block, std::span<uint8_t> data) const;

 private:
  Key32 key_{};
  std::array<uint8_t, 16> counter0_{};
};

// Hex encoding helpers for tests and logs.
std::string ToHex(std::span<const uint8_t> bytes);
absl::StatusOr<Bytes> FromHex(absl::string_view hex);

}  // namespace fedpers::secagg

#endif  // FEDPERS_SECURE_AGG_CRYPTO_H_
