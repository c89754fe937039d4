// Sealing of per-user residual adapters for storage at the coordinator.
//
// The coordinator keeps residuals for availability, versioning and deletion
// but must not read them: the client seals each with AES-256-GCM under a key
// only it holds (a 32-byte file, mode 0600, created on first use), binding the
// user id and version in the associated data so that the coordinator cannot
// swap one user's or version's blob for another's. The version (the round
// that produced the residual) also travels in clear in the blob's header, so
// that a client that lost everything but its key can fetch and open its
// latest residual. Thread-compatible.
#ifndef FEDPERS_CLIENT_RESIDUAL_VAULT_H_
#define FEDPERS_CLIENT_RESIDUAL_VAULT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "secure_agg/crypto.h"

namespace fedpers {

struct UnsealedResidual {
  int64_t version = 0;
  std::vector<uint8_t> plain;
};

class ResidualVault {
 public:
  // Loads the key at `key_path`, creating it (0600) if absent. DataLoss for a
  // key file of the wrong size.
  static absl::StatusOr<ResidualVault> Open(const std::string& key_path);

  // "FPRV" || version (8 bytes, little-endian) || nonce (12 random bytes) ||
  // ciphertext || tag. `version` >= 0.
  absl::StatusOr<std::vector<uint8_t>> Seal(const std::string& user_id, int64_t version,
                                            std::span<const uint8_t> residual) const;
  // PermissionDenied when the blob is malformed, was altered (its version
  // included), sealed under another key, or belongs to another user.
  absl::StatusOr<UnsealedResidual> Unseal(const std::string& user_id, std::span<const uint8_t> sealed) const;

 private:
  secagg::Key32 key_{};
};

}  // namespace fedpers

#endif  // FEDPERS_CLIENT_RESIDUAL_VAULT_H_
