#include "client/residual_vault.h"

#include <sys/stat.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"

namespace fedpers {
namespace {

constexpr char kMagic[4] = {'F', 'P', 'R', 'V'};
constexpr size_t kHeaderBytes = sizeof(kMagic) + 8;

std::vector<uint8_t> Aad(const std::string& user_id, int64_t version) {
  const std::string aad = absl::StrCat("fedpers residual v1\n", user_id, "\n", version);
  return std::vector<uint8_t>(aad.begin(), aad.end());
}

}  // namespace

absl::StatusOr<ResidualVault> ResidualVault::Open(const std::string& key_path) {
  ResidualVault vault;
  if (std::filesystem::exists(key_path)) {
    absl::StatusOr<std::string> bytes = ReadFileToString(key_path, 1024);
    if (!bytes.ok()) return bytes.status();
    if (bytes->size() != 32) {
      return absl::DataLossError(absl::StrCat("residual key '", key_path, "' is ", bytes->size(), " bytes, not 32"));
    }
    std::copy(bytes->begin(), bytes->end(), vault.key_.begin());
    return vault;
  }
  absl::StatusOr<secagg::Key32> key = secagg::RandomKey32();
  if (!key.ok()) return key.status();
  vault.key_ = *key;
  if (absl::Status s = WriteFileAtomically(key_path, std::string(key->begin(), key->end())); !s.ok()) return s;
  if (::chmod(key_path.c_str(), 0600) != 0) return absl::InternalError(absl::StrCat("cannot chmod 0600 '", key_path, "'"));
  return vault;
}

absl::StatusOr<std::vector<uint8_t>> ResidualVault::Seal(const std::string& user_id, int64_t version,
                                                         std::span<const uint8_t> residual) const {
  if (version < 0) return absl::InvalidArgumentError("residual version must be >= 0");
  std::vector<uint8_t> nonce(secagg::kGcmNonceBytes);
  if (absl::Status s = secagg::SecureRandomBytes(nonce); !s.ok()) return s;
  absl::StatusOr<secagg::Bytes> sealed = secagg::AesGcmSeal(key_, nonce, residual, Aad(user_id, version));
  if (!sealed.ok()) return sealed.status();
  std::vector<uint8_t> out(kMagic, kMagic + sizeof(kMagic));
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(version) >> (8 * i)));
  out.insert(out.end(), nonce.begin(), nonce.end());
  out.insert(out.end(), sealed->begin(), sealed->end());
  return out;
}

absl::StatusOr<UnsealedResidual> ResidualVault::Unseal(const std::string& user_id,
                                                       std::span<const uint8_t> sealed) const {
  if (sealed.size() < kHeaderBytes + secagg::kGcmNonceBytes + secagg::kGcmTagBytes ||
      !std::equal(kMagic, kMagic + sizeof(kMagic), sealed.begin())) {
    return absl::PermissionDeniedError(absl::StrCat("residual of user '", user_id, "' is not a sealed residual"));
  }
  uint64_t raw = 0;
  for (int i = 0; i < 8; ++i) raw |= static_cast<uint64_t>(sealed[sizeof(kMagic) + i]) << (8 * i);
  UnsealedResidual out;
  out.version = static_cast<int64_t>(raw);
  const std::span<const uint8_t> body = sealed.subspan(kHeaderBytes);
  absl::StatusOr<secagg::Bytes> plain = secagg::AesGcmOpen(key_, body.first(secagg::kGcmNonceBytes),
                                                           body.subspan(secagg::kGcmNonceBytes),
                                                           Aad(user_id, out.version));
  if (out.version < 0 || !plain.ok()) {
    // The sealed "version" is the round its client trained it in, not the
    // coordinator's version count.
    return absl::PermissionDeniedError(absl::StrCat(
        "residual of user '", user_id, "' (sealed after round ", out.version,
        ") does not authenticate: altered, swapped, or sealed under another key (is --state-dir the "
        "directory whose residual.key sealed it?)"));
  }
  out.plain = std::move(*plain);
  return out;
}

}  // namespace fedpers
