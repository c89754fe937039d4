// RAII handles for OpenSSL objects and error-queue text, shared by every
// module that calls OpenSSL.
#ifndef FEDPERS_COMMON_OPENSSL_UTIL_H_
#define FEDPERS_COMMON_OPENSSL_UTIL_H_

#include <openssl/err.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace fedpers {

// unique_ptr deleter calling an OpenSSL free function.
template <typename T, void (*Free)(T*)>
struct OpenSslDeleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using OpenSslPtr = std::unique_ptr<T, OpenSslDeleter<T, Free>>;

// `what`, then every queued OpenSSL error (the queue is cleared).
inline std::string OpenSslErrorText(absl::string_view what) {
  std::string out(what);
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    absl::StrAppend(&out, ": ", buf);
  }
  return out;
}

}  // namespace fedpers

#endif  // FEDPERS_COMMON_OPENSSL_UTIL_H_
