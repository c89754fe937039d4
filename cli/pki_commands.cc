// `fedpers pki ...`: a certificate authority for mutual TLS.
#include <iostream>

#include "cli/commands.h"
#include "common/atomic_file.h"
#include "common/pki.h"
#include "nlohmann/json.hpp"

namespace fedpers::cli {

void RegisterPki(CLI::App& app, const GlobalOptions& global) {
  auto* pki = app.add_subcommand("pki", "Certificates for mutual TLS between coordinator, clients and admins");
  pki->require_subcommand(1);

  auto* init = pki->add_subcommand("init", "Create a certificate authority (ca.crt, ca.key) in a directory");
  auto dir = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>("fedpers CA");
  auto days = std::make_shared<int>(3650);
  init->add_option("--dir", *dir, "Directory for the CA (keep ca.key private)")->required();
  init->add_option("--name", *name, "CA common name")->capture_default_str();
  init->add_option("--days", *days, "Validity in days")->capture_default_str()->check(Positive());
  init->callback([dir, name, days] {
    absl::StatusOr<CaPaths> p = InitCa(*dir, *name, *days);
    if (!p.ok()) Fail(std::string(p.status().message()));
    std::cout << "CA certificate: " << p->cert << "\nCA private key: " << p->key << " (mode 0600; keep it offline)\n";
  });

  auto* issue = pki->add_subcommand("issue", "Sign a coordinator, client or admin certificate with the CA");
  auto ca_dir = std::make_shared<std::string>();
  auto role = std::make_shared<std::string>();
  auto cname = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto hosts = std::make_shared<std::vector<std::string>>();
  auto cdays = std::make_shared<int>(825);
  auto json = std::make_shared<bool>(false);
  auto replace = std::make_shared<bool>(false);
  issue->add_option("--dir", *ca_dir, "CA directory (from `pki init`)")->required();
  issue->add_option("--role", *role, "coordinator, client or admin")->required()
      ->check(CLI::IsMember({"coordinator", "client", "admin"}));
  issue->add_option("--name", *cname, "Identity (certificate CN): the partner, host or operator name")->required();
  issue->add_option("--out", *out, "Output directory (default: the CA directory)");
  issue->add_option(
      "--host", *hosts,
      "Coordinator certificates: a host name or IP address clients dial (repeatable; the hosts given replace "
      "the default localhost, 127.0.0.1, ::1)");
  issue->add_option("--days", *cdays, "Validity in days")->capture_default_str()->check(Positive());
  issue->add_flag("--json", *json, "Print the written paths and identity as JSON");
  issue->add_flag("--replace", *replace,
                  "Replace an existing certificate and key of this name (the old key stops matching wherever it is "
                  "deployed)");
  issue->callback([ca_dir, role, cname, out, hosts, cdays, json, replace] {
    absl::StatusOr<CertRole> r = ParseCertRole(*role);
    if (!r.ok()) Fail(std::string(r.status().message()));
    absl::StatusOr<IssuedPaths> p = IssueCertificate(*ca_dir, *r, *cname, out->empty() ? *ca_dir : *out, *hosts, *cdays, *replace);
    if (!p.ok()) Fail(std::string(p.status().message()));
    absl::StatusOr<std::string> pem = ReadFileToString(p->cert);
    absl::StatusOr<CertIdentity> id = pem.ok() ? ParseCertIdentity(*pem) : pem.status();
    if (!id.ok()) Fail(std::string(id.status().message()));
    if (*json) {
      std::cout << nlohmann::json({{"cert", p->cert}, {"key", p->key}, {"ca_cert", p->ca_cert}, {"name", id->name},
                                   {"role", CertRoleName(id->role)}, {"fingerprint_sha256", id->fingerprint_sha256}})
                       .dump(2)
                << "\n";
      return;
    }
    std::cout << CertRoleName(id->role) << " certificate for '" << id->name << "'\n  cert: " << p->cert
              << "\n  key:  " << p->key << " (mode 0600)\n  CA:   " << p->ca_cert
              << "\n  SHA-256 fingerprint: " << id->fingerprint_sha256 << "\n";
  });
  (void)global;
}

}  // namespace fedpers::cli
