// Addresses as the command line and configs give them, checked before gRPC
// sees them: gRPC takes a port above 65535 modulo 65536 and a missing port
// as 443, so a typo would reach another service instead of failing.
#ifndef FEDPERS_COMMON_HOST_PORT_H_
#define FEDPERS_COMMON_HOST_PORT_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace fedpers {

// OK for "HOST:PORT" ("127.0.0.1:7443", "coord.example.org:443"),
// "[IPV6]:PORT" ("[::1]:7443") and gRPC's "unix:PATH"; PORT is 1-65535, or 0
// when `allow_port_zero` (listening: the system picks a free port).
// InvalidArgument naming the address and what is wrong otherwise.
absl::Status CheckHostPort(absl::string_view address, bool allow_port_zero);

}  // namespace fedpers

#endif  // FEDPERS_COMMON_HOST_PORT_H_
