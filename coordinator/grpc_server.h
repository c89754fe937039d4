// The coordinator's gRPC front end: the Federation and Admin services over
// mutual TLS (or, for local experiments only, insecure), and the ticker
// that drives the round schedule.
#ifndef FEDPERS_COORDINATOR_GRPC_SERVER_H_
#define FEDPERS_COORDINATOR_GRPC_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/runtime.h"

namespace fedpers {

struct ServeOptions {
  std::string listen = "127.0.0.1:0";  // port 0: pick a free one
  // Mutual TLS: the coordinator's certificate and key and the CA that signs
  // every client and admin certificate.
  std::string cert_file, key_file, ca_file;
  // No TLS: identities come from the x-fedpers-identity header. Local
  // experiments only.
  bool insecure = false;
  int max_message_bytes = 64 << 20;
  int64_t max_residual_bytes = int64_t{256} << 20;
  int tick_ms = 20;
};

// Owns the gRPC server and the ticker thread. Shutdown on destruction.
class CoordinatorServer {
 public:
  virtual ~CoordinatorServer() = default;
  virtual int port() const = 0;
  // Blocks until Shutdown() or the runtime finished its rounds.
  virtual void Wait() = 0;
  virtual void Shutdown() = 0;
};

// Starts serving `runtime` (which must outlive the server).
absl::StatusOr<std::unique_ptr<CoordinatorServer>> StartCoordinatorServer(const ServeOptions& options,
                                                                          CoordinatorRuntime* runtime);

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_GRPC_SERVER_H_
