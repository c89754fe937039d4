#include "common/host_port.h"

#include <cstdint>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fedpers {

absl::Status CheckHostPort(absl::string_view address, bool allow_port_zero) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "': ", why));
  };
  if (absl::StartsWith(address, "unix:")) {
    return address.size() > 5 ? absl::OkStatus() : bad("unix: needs a socket path");
  }
  absl::string_view host, port;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return bad("expected [IPV6]:PORT");
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) return bad("expected HOST:PORT (no port given)");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) return bad("write an IPv6 address in brackets, e.g. [::1]:7443");
  }
  if (host.empty()) return bad("no host");
  int64_t value = -1;
  if (port.empty() || port.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(port, &value)) {
    return bad(absl::StrCat("port '", port, "' is not a number"));
  }
  if (value > 65535 || (value == 0 && !allow_port_zero)) {
    return bad(absl::StrCat("port ", value, " is out of range (1-65535", allow_port_zero ? ", or 0 for any" : "", ")"));
  }
  return absl::OkStatus();
}

}  // namespace fedpers
