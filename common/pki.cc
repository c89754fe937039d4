#include "common/pki.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <algorithm>
#include <ctime>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/openssl_util.h"
#include "common/status.h"
#include "common/utf8.h"

namespace fedpers {
namespace {

using PKey = OpenSslPtr<EVP_PKEY, EVP_PKEY_free>;
using Cert = OpenSslPtr<X509, X509_free>;
using Bio = OpenSslPtr<BIO, BIO_free_all>;
using Ext = OpenSslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using Store = OpenSslPtr<X509_STORE, X509_STORE_free>;
using StoreCtx = OpenSslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;

std::string SslError(absl::string_view what) { return OpenSslErrorText(what); }

absl::StatusOr<PKey> NewEcKey() {
  PKey key(EVP_EC_gen("P-256"));
  if (!key) return absl::InternalError(SslError("EC key generation failed"));
  return key;
}

absl::StatusOr<std::string> ToPem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return absl::InternalError(SslError("cannot encode private key"));
  }
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

absl::StatusOr<std::string> ToPem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return absl::InternalError(SslError("cannot encode certificate"));
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

absl::StatusOr<Cert> CertFromPem(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) {
    ERR_clear_error();
    return absl::InvalidArgumentError("not a PEM certificate");
  }
  return cert;
}

absl::StatusOr<PKey> KeyFromPem(const std::string& pem) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  PKey key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) {
    ERR_clear_error();
    return absl::InvalidArgumentError("not a PEM private key");
  }
  return key;
}

absl::Status WritePrivate(const std::string& path, const std::string& pem) {
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(path, pem));
  if (::chmod(path.c_str(), 0600) != 0) return absl::InternalError(absl::StrCat("cannot chmod 0600 '", path, "'"));
  return absl::OkStatus();
}

absl::Status AddExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  Ext ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return absl::InternalError(SslError(absl::StrCat("cannot add extension ", value)));
  }
  return absl::OkStatus();
}

const std::string kOrganization = "fedpers";

absl::StatusOr<Cert> NewCert(EVP_PKEY* subject_key, const std::string& cn, const std::string& ou, int days) {
  // X.509 times end at 9999-12-31T23:59:59Z; a later expiry writes a
  // certificate no reader accepts.
  constexpr int64_t kLastEncodableSecond = 253402300799;
  const int64_t max_days = (kLastEncodableSecond - static_cast<int64_t>(std::time(nullptr))) / 86400;
  if (days < 1 || days > max_days) {
    return absl::InvalidArgumentError(absl::StrCat("validity of ", days, " days: must be 1 to ", max_days,
                                                   " (X.509 dates end at 9999-12-31)"));
  }
  Cert cert(X509_new());
  if (!cert) return absl::InternalError("X509_new failed");
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return absl::InternalError(SslError("RAND_bytes failed"));
  serial[0] &= 0x7f;
  OpenSslPtr<BIGNUM, BN_free> bn(BN_bin2bn(serial, sizeof(serial), nullptr));
  BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(days) * 86400);
  X509_set_pubkey(cert.get(), subject_key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  for (auto [field, value] : {std::pair<const char*, const std::string*>{"O", &kOrganization}, {"OU", &ou}, {"CN", &cn}}) {
    // OpenSSL refuses, e.g., a CN over 64 characters; a subject without it
    // would be a certificate without an identity.
    if (X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value->c_str()),
                                   -1, -1, 0) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(absl::StrCat("cannot put '", *value, "' in a certificate's ", field,
                                                     " (1-64 characters of UTF-8)"));
    }
  }
  return cert;
}

// A subject alternative name: "IP:..." for an IPv4 or IPv6 address,
// "DNS:..." for a host name (RFC 1123 labels, optionally a leading "*."
// wildcard over at least two labels, the least that TLS clients match);
// InvalidArgument naming the host otherwise. Checked here because OpenSSL
// reads the names as one comma-separated config string, where a stray comma
// or colon would add or change an entry.
absl::StatusOr<std::string> SubjectAltName(const std::string& host) {
  unsigned char addr[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, host.c_str(), addr) == 1 || inet_pton(AF_INET6, host.c_str(), addr) == 1) {
    return absl::StrCat("IP:", host);
  }
  auto bad = [&host](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("host '", host, "' ", why));
  };
  if (!host.empty() && host.find_first_not_of("0123456789.") == std::string::npos)
    return bad("is not an IPv4 address");
  if (host.size() > 253) return bad("is longer than 253 characters");
  if (host.size() > 1 && host.back() == '.') return bad("ends with '.': give the name without it");
  std::string name = host;
  if (name.rfind("*.", 0) == 0) {
    name = name.substr(2);
    if (name.find('.') == std::string::npos) {
      return bad(
          "is a wildcard over a single label, which TLS clients do not match (use *.NAME.TLD or longer)");
    }
  }
  size_t start = 0;
  while (true) {
    const size_t end = std::min(name.find('.', start), name.size());
    const std::string label = name.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-' ||
        !std::all_of(label.begin(), label.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; })) {
      return bad(
          "is neither an IP address nor a host name (labels of 1-63 letters, digits and inner '-', "
          "separated by '.')");
    }
    if (end == name.size()) break;
    start = end + 1;
  }
  return absl::StrCat("DNS:", host);
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '@')) return false;
  }
  return name != "ca" && name[0] != '.';
}

}  // namespace

absl::StatusOr<CertRole> ParseCertRole(const std::string& role) {
  if (role == "coordinator") return CertRole::kCoordinator;
  if (role == "client") return CertRole::kClient;
  if (role == "admin") return CertRole::kAdmin;
  return absl::InvalidArgumentError(absl::StrCat("unknown role '", role, "' (coordinator, client, admin)"));
}

std::string CertRoleName(CertRole role) {
  switch (role) {
    case CertRole::kCoordinator: return "coordinator";
    case CertRole::kClient: return "client";
    case CertRole::kAdmin: return "admin";
  }
  return "?";
}

absl::StatusOr<CaPaths> InitCa(const std::string& dir, const std::string& name, int days) {
  CaPaths paths{dir + "/ca.crt", dir + "/ca.key"};
  // X.509 bounds a CN at 64 characters; count UTF-8 lead bytes.
  const size_t characters = static_cast<size_t>(
      std::count_if(name.begin(), name.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; }));
  const bool printable = std::all_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f; });
  if (characters == 0 || characters > 64 || !printable || FindInvalidUtf8(name) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("CA name '", name, "' must be 1-64 characters of UTF-8 without control characters"));
  }
  if (std::filesystem::exists(paths.key) || std::filesystem::exists(paths.cert)) {
    return absl::AlreadyExistsError(absl::StrCat("'", dir, "' already holds a CA; refusing to overwrite it"));
  }
  FEDPERS_ASSIGN_OR_RETURN(PKey key, NewEcKey());
  FEDPERS_ASSIGN_OR_RETURN(Cert cert, NewCert(key.get(), name, "ca", days));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return absl::InternalError(SslError("CA self-signing failed"));
  FEDPERS_ASSIGN_OR_RETURN(std::string key_pem, ToPem(key.get()));
  FEDPERS_ASSIGN_OR_RETURN(std::string cert_pem, ToPem(cert.get()));
  FEDPERS_RETURN_IF_ERROR(WritePrivate(paths.key, key_pem));
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(paths.cert, cert_pem));
  return paths;
}

absl::StatusOr<IssuedPaths> IssueCertificate(const std::string& ca_dir, CertRole role, const std::string& name,
                                             const std::string& out_dir, std::vector<std::string> hosts, int days,
                                             bool replace) {
  if (!ValidName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("certificate name '", name,
                                                   "' must be 1-64 letters, digits, '-', '_', '.' or '@'"));
  }
  if (role != CertRole::kCoordinator && !hosts.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("host names go in coordinator certificates only; a ",
                                                   CertRoleName(role), " certificate names its holder by '",
                                                   name, "' alone"));
  }
  std::string san;  // coordinators only
  if (role == CertRole::kCoordinator) {
    if (hosts.empty()) hosts = {"localhost", "127.0.0.1", "::1"};
    for (const std::string& h : hosts) {
      FEDPERS_ASSIGN_OR_RETURN(std::string entry, SubjectAltName(h));
      absl::StrAppend(&san, san.empty() ? "" : ",", entry);
    }
  }
  absl::StatusOr<std::string> ca_cert_pem = ReadFileToString(ca_dir + "/ca.crt");
  absl::StatusOr<std::string> ca_key_pem = ReadFileToString(ca_dir + "/ca.key");
  if (!ca_cert_pem.ok() || !ca_key_pem.ok()) {
    return absl::NotFoundError(absl::StrCat("no CA in '", ca_dir, "' (run `fedpers pki init --dir ", ca_dir, "`)"));
  }
  absl::StatusOr<Cert> ca = CertFromPem(*ca_cert_pem);
  if (!ca.ok()) return absl::Status(ca.status().code(), absl::StrCat("'", ca_dir, "/ca.crt': ", ca.status().message()));
  absl::StatusOr<PKey> ca_key = KeyFromPem(*ca_key_pem);
  if (!ca_key.ok()) {
    return absl::Status(ca_key.status().code(), absl::StrCat("'", ca_dir, "/ca.key': ", ca_key.status().message()));
  }
  if (X509_check_ca(ca->get()) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", ca_dir, "/ca.crt' is not a CA certificate"));
  }
  if (X509_check_private_key(ca->get(), ca_key->get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        absl::StrCat("'", ca_dir, "/ca.key' is not the key of '", ca_dir, "/ca.crt': certificates it signed would not verify"));
  }
  IssuedPaths paths{out_dir + "/" + name + ".crt", out_dir + "/" + name + ".key", out_dir + "/ca.crt"};
  if (!replace && (std::filesystem::exists(paths.cert) || std::filesystem::exists(paths.key))) {
    return absl::AlreadyExistsError(absl::StrCat("'", out_dir, "' already holds a certificate or key for '", name,
                                                 "'; refusing to replace it (--replace to issue a new one: the old "
                                                 "key stops matching wherever it is deployed)"));
  }
  FEDPERS_ASSIGN_OR_RETURN(PKey key, NewEcKey());
  FEDPERS_ASSIGN_OR_RETURN(Cert cert, NewCert(key.get(), name, CertRoleName(role), days));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca->get()));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), ca->get(), NID_basic_constraints, "critical,CA:FALSE"));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), ca->get(), NID_key_usage, "critical,digitalSignature,keyAgreement"));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), ca->get(), NID_ext_key_usage,
                                       role == CertRole::kCoordinator ? "serverAuth" : "clientAuth"));
  FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), ca->get(), NID_authority_key_identifier, "keyid:always"));
  if (!san.empty()) {
    FEDPERS_RETURN_IF_ERROR(AddExtension(cert.get(), ca->get(), NID_subject_alt_name, san.c_str()));
  }
  if (X509_sign(cert.get(), ca_key->get(), EVP_sha256()) == 0) return absl::InternalError(SslError("signing failed"));
  FEDPERS_ASSIGN_OR_RETURN(std::string key_pem, ToPem(key.get()));
  FEDPERS_ASSIGN_OR_RETURN(std::string cert_pem, ToPem(cert.get()));
  FEDPERS_RETURN_IF_ERROR(WritePrivate(paths.key, key_pem));
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(paths.cert, cert_pem));
  FEDPERS_RETURN_IF_ERROR(WriteFileAtomically(paths.ca_cert, *ca_cert_pem));
  return paths;
}

absl::StatusOr<CertIdentity> ParseCertIdentity(const std::string& pem) {
  FEDPERS_ASSIGN_OR_RETURN(Cert cert, CertFromPem(pem));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  auto field = [&](int nid) -> std::string {
    char buf[256];
    const int n = X509_NAME_get_text_by_NID(subject, nid, buf, sizeof(buf));
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  };
  CertIdentity id;
  id.name = field(NID_commonName);
  absl::StatusOr<CertRole> role = ParseCertRole(field(NID_organizationalUnitName));
  if (id.name.empty() || !role.ok()) return absl::InvalidArgumentError("certificate carries no fedpers name and role");
  id.role = *role;
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert.get(), EVP_sha256(), md, &len) != 1) return absl::InternalError(SslError("digest failed"));
  static const char* kHex = "0123456789abcdef";
  for (unsigned int i = 0; i < len; ++i) {
    id.fingerprint_sha256.push_back(kHex[md[i] >> 4]);
    id.fingerprint_sha256.push_back(kHex[md[i] & 15]);
  }
  return id;
}

absl::Status VerifyCertificate(const std::string& pem, const std::string& ca_pem) {
  FEDPERS_ASSIGN_OR_RETURN(Cert cert, CertFromPem(pem));
  Store store(X509_STORE_new());
  StoreCtx ctx(X509_STORE_CTX_new());
  if (!store || !ctx) return absl::InternalError(SslError("cannot set up certificate verification"));
  // Every certificate of the CA file counts (a bundle of old and new CAs
  // while a CA is rotated), as for the TLS handshake.
  Bio bio(BIO_new_mem_buf(ca_pem.data(), static_cast<int>(ca_pem.size())));
  int cas = 0;
  while (true) {
    Cert ca(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!ca) break;
    if (X509_STORE_add_cert(store.get(), ca.get()) != 1) {
      return absl::InternalError(SslError("cannot set up certificate verification"));
    }
    ++cas;
  }
  ERR_clear_error();  // the end of the PEM stream reads as an error
  if (cas == 0) return absl::InvalidArgumentError("not a PEM certificate");
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return absl::InternalError(SslError("cannot set up certificate verification"));
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    return absl::PermissionDeniedError(
        absl::StrCat("certificate rejected: ", X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))));
  }
  return absl::OkStatus();
}

absl::StatusOr<TlsIdentity> LoadTlsIdentity(const std::string& cert_file, const std::string& key_file,
                                            const std::string& ca_file, CertRole role) {
  TlsIdentity out;
  for (auto [path, text] : {std::pair{&cert_file, &out.cert_pem}, {&key_file, &out.key_pem}, {&ca_file, &out.ca_pem}}) {
    absl::StatusOr<std::string> read = ReadFileToString(*path);
    if (!read.ok()) return read.status();
    *text = std::move(*read);
  }
  absl::StatusOr<CertIdentity> id = ParseCertIdentity(out.cert_pem);
  if (!id.ok()) return absl::InvalidArgumentError(absl::StrCat("'", cert_file, "': ", id.status().message()));
  if (id->role != role) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", cert_file, "' is ", id->role == CertRole::kAdmin ? "an " : "a ", CertRoleName(id->role),
        " certificate; this needs one issued with `fedpers pki issue --role ", CertRoleName(role), "`"));
  }
  absl::StatusOr<Cert> cert = CertFromPem(out.cert_pem);
  if (!cert.ok()) return absl::InvalidArgumentError(absl::StrCat("'", cert_file, "': ", cert.status().message()));
  absl::StatusOr<PKey> key = KeyFromPem(out.key_pem);
  if (!key.ok()) return absl::InvalidArgumentError(absl::StrCat("'", key_file, "': ", key.status().message()));
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("'", key_file, "' is not the key of '", cert_file,
                                                   "' (a key from another `pki issue`?)"));
  }
  if (absl::Status v = VerifyCertificate(out.cert_pem, out.ca_pem); !v.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", cert_file, "' does not verify against '", ca_file, "': ", v.message()));
  }
  return out;
}

std::string TlsFailureHint(std::string_view transport_error, bool insecure) {
  auto says = [&](std::string_view a, std::string_view b) {
    return transport_error.find(a) != std::string_view::npos ||
           transport_error.find(b) != std::string_view::npos;
  };
  if (says("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")) {
    return " (the coordinator's certificate does not verify against the CA file given: issued by another "
           "CA?)";
  }
  if (says("WRONG_VERSION_NUMBER", "wrong version number")) {
    return " (the coordinator does not speak TLS: one with \"insecure\": true takes only --insecure "
           "connections)";
  }
  if (insecure && says("Socket closed", "Connection reset")) {
    return " (a coordinator with TLS refuses connections without it: drop --insecure and pass --tls-dir and "
           "--name)";
  }
  return "";
}

}  // namespace fedpers
