#include "common/build_identity.h"

#include <openssl/evp.h>

#include <cstdio>
#include <vector>

#include "absl/strings/escaping.h"
#include "common/openssl_util.h"

namespace fedpers {
namespace {

std::string DigestOfExecutable() {
  std::FILE* f = std::fopen("/proc/self/exe", "rb");
  if (f == nullptr) return "";
  OpenSslPtr<EVP_MD_CTX, EVP_MD_CTX_free> ctx(EVP_MD_CTX_new());
  bool ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
  std::vector<unsigned char> buf(1 << 16);
  while (ok) {
    const size_t n = std::fread(buf.data(), 1, buf.size(), f);
    if (n > 0) ok = EVP_DigestUpdate(ctx.get(), buf.data(), n) == 1;
    if (n < buf.size()) {
      ok = ok && !std::ferror(f);
      break;
    }
  }
  std::fclose(f);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!ok || EVP_DigestFinal_ex(ctx.get(), out, &len) != 1 || len != 32) return "";
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(out), len));
}

}  // namespace

const std::string& ExecutableDigest() {
  static const std::string* digest = new std::string(DigestOfExecutable());
  return *digest;
}

}  // namespace fedpers
