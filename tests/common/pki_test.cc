#include "common/pki.h"

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "common/atomic_file.h"

namespace fedpers {
namespace {

std::string FreshDir(const std::string& name) {
  std::string d = ::testing::TempDir() + "/pki_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

TEST(PkiTest, IssuedCertificatesVerifyAndCarryTheirIdentity) {
  const std::string ca = FreshDir("ca");
  auto paths = InitCa(ca);
  ASSERT_TRUE(paths.ok()) << paths.status();
  struct stat st;
  ASSERT_EQ(stat(paths->key.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "private keys are 0600";
  EXPECT_EQ(InitCa(ca).status().code(), absl::StatusCode::kAlreadyExists);
  const std::string ca_pem = *ReadFileToString(paths->cert);
  for (auto [role, name] : {std::pair{CertRole::kCoordinator, "coord"}, {CertRole::kClient, "partner-a"},
                            {CertRole::kAdmin, "ops@example"}}) {
    auto issued = IssueCertificate(ca, role, name, FreshDir(name));
    ASSERT_TRUE(issued.ok()) << issued.status();
    const std::string pem = *ReadFileToString(issued->cert);
    EXPECT_TRUE(VerifyCertificate(pem, ca_pem).ok());
    auto id = ParseCertIdentity(pem);
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_EQ(id->name, name);
    EXPECT_EQ(id->role, role);
    EXPECT_EQ(id->fingerprint_sha256.size(), 64u);
  }
}

TEST(PkiTest, CertificatesFromAnotherCaAreRejected) {
  const std::string ca1 = FreshDir("ca1"), ca2 = FreshDir("ca2");
  ASSERT_TRUE(InitCa(ca1).ok());
  ASSERT_TRUE(InitCa(ca2).ok());
  auto foreign = IssueCertificate(ca2, CertRole::kClient, "intruder", FreshDir("intruder"));
  ASSERT_TRUE(foreign.ok());
  absl::Status s = VerifyCertificate(*ReadFileToString(foreign->cert), *ReadFileToString(ca1 + "/ca.crt"));
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(s.message().find("certificate rejected"), absl::string_view::npos) << s;
}

TEST(PkiTest, BadInputIsAClearError) {
  const std::string ca = FreshDir("bad");
  EXPECT_EQ(IssueCertificate(ca, CertRole::kClient, "x", ca).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(InitCa(ca).ok());
  EXPECT_FALSE(IssueCertificate(ca, CertRole::kClient, "../etc/passwd", ca).ok());
  EXPECT_FALSE(IssueCertificate(ca, CertRole::kClient, "", ca).ok());
  EXPECT_FALSE(ParseCertRole("root").ok());
  EXPECT_FALSE(ParseCertIdentity("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").ok());
  EXPECT_FALSE(ParseCertIdentity(*ReadFileToString(ca + "/ca.crt")).ok()) << "the CA has no fedpers role";
  // A CA name that cannot be a subject is refused, and nothing is written.
  const std::string named = FreshDir("named");
  for (const std::string& name : {std::string(65, 'x'), std::string(), std::string("tab\there")}) {
    absl::Status s = InitCa(named, name).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_NE(s.message().find("CA name"), absl::string_view::npos) << s;
  }
  EXPECT_FALSE(std::filesystem::exists(named + "/ca.key"));
  EXPECT_TRUE(InitCa(named, "Acme Research CA").ok()) << "spaces are fine in a CA's name";
  // 64 characters, not bytes: 40 two-byte characters are fine.
  std::string greek;
  for (int i = 0; i < 40; ++i) greek += "\xce\xb1";  // alpha
  EXPECT_TRUE(InitCa(FreshDir("greek"), greek).ok());
}

TEST(PkiTest, HostNamesAreCheckedAndGoInCoordinatorCertificatesOnly) {
  const std::string ca = FreshDir("hosts");
  ASSERT_TRUE(InitCa(ca).ok());
  auto issued = IssueCertificate(ca, CertRole::kCoordinator, "coord", ca,
                                 {"fed.example.com", "10.0.0.7", "fd00::7", "*.example.org"});
  ASSERT_TRUE(issued.ok()) << issued.status();
  const std::string pem = *ReadFileToString(issued->cert);
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(X509_check_host(cert, "fed.example.com", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_host(cert, "node1.example.org", 0, 0, nullptr), 1);
  EXPECT_EQ(X509_check_ip_asc(cert, "10.0.0.7", 0), 1);
  EXPECT_EQ(X509_check_ip_asc(cert, "fd00::7", 0), 1);
  // The hosts given replace the loopback defaults.
  EXPECT_NE(X509_check_host(cert, "localhost", 0, 0, nullptr), 1);
  EXPECT_NE(X509_check_ip_asc(cert, "127.0.0.1", 0), 1);
  X509_free(cert);

  // A comma would smuggle another entry into OpenSSL's name list.
  for (const std::string& bad :
       {std::string("evil.example,DNS:bank.example"), std::string("10.0.0.256"), std::string("-lead.example"),
        std::string("a..b"), std::string(""), std::string("under_score.example"), std::string("host:443"),
        std::string("*.lan"), std::string("fed.example.com."), std::string(64, 'x')}) {
    absl::Status st =
        IssueCertificate(ca, CertRole::kCoordinator, "coord2", ca, {"ok.example", bad}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(st.message().find("host '" + bad + "'"), absl::string_view::npos) << st;
  }
  EXPECT_FALSE(std::filesystem::exists(ca + "/coord2.crt")) << "nothing is written for a bad host";
  for (CertRole role : {CertRole::kClient, CertRole::kAdmin}) {
    absl::Status st = IssueCertificate(ca, role, "holder", ca, {"partner.example"}).status();
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("coordinator certificates only"), absl::string_view::npos) << st;
  }
  EXPECT_FALSE(std::filesystem::exists(ca + "/holder.crt"));
}

// LoadTlsIdentity checks a party's files before gRPC sees them: the key
// belongs to the certificate, the certificate to the CA and the role.
TEST(PkiTest, TlsIdentitiesAreCheckedBeforeUse) {
  const std::string ca = FreshDir("tls_ca"), other = FreshDir("tls_other"), out = FreshDir("tls_out");
  ASSERT_TRUE(InitCa(ca).ok());
  ASSERT_TRUE(InitCa(other).ok());
  ASSERT_TRUE(IssueCertificate(ca, CertRole::kClient, "alice", out).ok());
  ASSERT_TRUE(IssueCertificate(ca, CertRole::kClient, "bob", out).ok());
  ASSERT_TRUE(IssueCertificate(other, CertRole::kClient, "carol", other + "/certs").ok());
  absl::StatusOr<TlsIdentity> ok = LoadTlsIdentity(out + "/alice.crt", out + "/alice.key", out + "/ca.crt", CertRole::kClient);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->cert_pem, *ReadFileToString(out + "/alice.crt"));
  auto error = [&](const std::string& cert, const std::string& key, const std::string& ca_file, CertRole role) {
    absl::StatusOr<TlsIdentity> t = LoadTlsIdentity(cert, key, ca_file, role);
    EXPECT_FALSE(t.ok());
    return t.ok() ? std::string() : std::string(t.status().message());
  };
  EXPECT_NE(error(out + "/alice.crt", out + "/bob.key", out + "/ca.crt", CertRole::kClient).find("bob.key' is not the key of"),
            std::string::npos);
  EXPECT_NE(error(out + "/alice.crt", out + "/alice.key", out + "/ca.crt", CertRole::kAdmin)
                .find("alice.crt' is a client certificate; this needs one issued with `fedpers pki issue --role admin`"),
            std::string::npos);
  EXPECT_NE(error(other + "/certs/carol.crt", other + "/certs/carol.key", out + "/ca.crt", CertRole::kClient)
                .find("does not verify against"),
            std::string::npos);
  EXPECT_NE(error(out + "/nobody.crt", out + "/alice.key", out + "/ca.crt", CertRole::kClient).find("nobody.crt"),
            std::string::npos);
  // A CA file holding two CAs (a rotation): certificates of either verify.
  std::ofstream(out + "/bundle.crt") << *ReadFileToString(other + "/ca.crt") << *ReadFileToString(ca + "/ca.crt");
  EXPECT_TRUE(LoadTlsIdentity(out + "/alice.crt", out + "/alice.key", out + "/bundle.crt", CertRole::kClient).ok());
  EXPECT_TRUE(LoadTlsIdentity(other + "/certs/carol.crt", other + "/certs/carol.key", out + "/bundle.crt",
                              CertRole::kClient)
                  .ok());
}

// Nothing is written when the request cannot give a working certificate,
// and an issued key is never replaced silently.
TEST(PkiTest, IssuingChecksTheCaTheExpiryAndExistingFilesFirst) {
  const std::string ca = FreshDir("checks"), other = FreshDir("checks-other"), out = FreshDir("checks-out");
  ASSERT_TRUE(InitCa(ca).ok());
  ASSERT_TRUE(InitCa(other).ok());
  auto first = IssueCertificate(ca, CertRole::kClient, "partner", out);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string key = *ReadFileToString(first->key);
  absl::Status s = IssueCertificate(ca, CertRole::kClient, "partner", out).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_EQ(*ReadFileToString(first->key), key) << "the deployed key is untouched";
  ASSERT_TRUE(IssueCertificate(ca, CertRole::kClient, "partner", out, {}, 825, /*replace=*/true).ok());
  EXPECT_NE(*ReadFileToString(first->key), key);

  // ca.key of another CA: certificates it signed would not verify.
  std::filesystem::copy_file(other + "/ca.key", ca + "/ca.key", std::filesystem::copy_options::overwrite_existing);
  s = IssueCertificate(ca, CertRole::kClient, "second", out).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("is not the key of"), absl::string_view::npos) << s;
  EXPECT_FALSE(std::filesystem::exists(out + "/second.key"));

  // A leaf certificate in the CA's place.
  const std::string fake = FreshDir("checks-fake");
  std::filesystem::copy_file(first->cert, fake + "/ca.crt");
  std::filesystem::copy_file(first->key, fake + "/ca.key");
  s = IssueCertificate(fake, CertRole::kClient, "third", out).status();
  EXPECT_NE(s.message().find("is not a CA certificate"), absl::string_view::npos) << s;

  // Expiries X.509 cannot encode.
  s = IssueCertificate(other, CertRole::kClient, "late", out, {}, 100000000).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("9999-12-31"), absl::string_view::npos) << s;
  EXPECT_FALSE(std::filesystem::exists(out + "/late.key"));
  EXPECT_EQ(InitCa(FreshDir("late-ca"), "fedpers CA", 2920000).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedpers
