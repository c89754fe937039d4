// A small certificate authority for fedpers deployments (mutual TLS).
//
// `fedpers pki init` creates a CA (ECDSA P-256, self-signed); `fedpers pki
// issue` signs coordinator, client and admin certificates. A certificate's
// identity is its subject: CN = name, OU = role. Private keys are written
// with mode 0600 and never printed.
#ifndef FEDPERS_COMMON_PKI_H_
#define FEDPERS_COMMON_PKI_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers {

enum class CertRole { kCoordinator, kClient, kAdmin };

absl::StatusOr<CertRole> ParseCertRole(const std::string& role);
std::string CertRoleName(CertRole role);

struct CaPaths {
  std::string cert, key;
};

// Creates `dir`/ca.crt and `dir`/ca.key. AlreadyExists if a CA is there;
// InvalidArgument when `days` puts the expiry past 9999-12-31.
absl::StatusOr<CaPaths> InitCa(const std::string& dir, const std::string& name = "fedpers CA", int days = 3650);

struct IssuedPaths {
  std::string cert, key, ca_cert;
};

// Signs a certificate for `name` in `role` with the CA in `ca_dir`, writing
// `out_dir`/<name>.crt, <name>.key and ca.crt. Coordinator certificates get
// serverAuth and subject alternative names `hosts` (IP addresses or host
// names; given ones replace the default localhost, 127.0.0.1 and ::1);
// client and admin certificates get clientAuth, and `hosts` must be empty
// (InvalidArgument), as must every host be an address or a host name.
// Checks before writing anything: ca.key must be ca.crt's key and ca.crt a
// CA (InvalidArgument), the expiry must be encodable (days up to
// 9999-12-31), and an existing <name>.crt or <name>.key is AlreadyExists
// unless `replace`.
absl::StatusOr<IssuedPaths> IssueCertificate(const std::string& ca_dir, CertRole role, const std::string& name,
                                             const std::string& out_dir, std::vector<std::string> hosts = {},
                                             int days = 825, bool replace = false);

struct CertIdentity {
  std::string name;  // subject CN
  CertRole role = CertRole::kClient;
  std::string fingerprint_sha256;  // hex of the DER encoding
};

// Reads the identity of a PEM certificate. InvalidArgument when it does not
// parse or carries no fedpers role.
absl::StatusOr<CertIdentity> ParseCertIdentity(const std::string& pem);

// Verifies `pem` against the CA certificate `ca_pem` (signature, validity
// period). PermissionDenied with OpenSSL's reason otherwise.
absl::Status VerifyCertificate(const std::string& pem, const std::string& ca_pem);

// The PEM texts of one party's mutual-TLS identity.
struct TlsIdentity {
  std::string cert_pem, key_pem, ca_pem;
};

// Reads and checks a TLS identity before gRPC gets it (gRPC would accept any
// files and fail every handshake later with "Socket closed"): each file is
// readable (errors name it), the key is the certificate's, the certificate
// verifies against the CA, and its role is `role`. InvalidArgument naming
// the file and the fix otherwise.
absl::StatusOr<TlsIdentity> LoadTlsIdentity(const std::string& cert_file, const std::string& key_file,
                                            const std::string& ca_file, CertRole role);

// What a failed connection's gRPC message (`transport_error`) most likely
// means when TLS is the cause, as a parenthesized hint to append; "" when
// it says nothing of TLS. `insecure`: this side connected without TLS.
std::string TlsFailureHint(std::string_view transport_error, bool insecure);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_PKI_H_
