// The client process's loop over gRPC: join with its users, poll, train and
// answer SecAgg+ rounds through each user's ClientSession, upload sealed
// residuals, reconnect with exponential backoff.
#ifndef FEDPERS_CLIENT_GRPC_CLIENT_H_
#define FEDPERS_CLIENT_GRPC_CLIENT_H_

#include <atomic>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "client/client_session.h"
#include "client/residual_vault.h"

namespace fedpers {

struct ClientRunOptions {
  std::string coordinator;  // host:port
  std::string cert_file, key_file, ca_file;  // mutual TLS
  bool insecure = false;
  std::string insecure_identity;  // the client name claimed without TLS
  int64_t rounds = 0;             // stop once every user saw this many rounds end (0: run until stopped)
  bool upload_residuals = true;
  int max_backoff_ms = 5000;
  int max_message_bytes = 64 << 20;
  // When set, every user's plain update of every round (B_g' - B_g, before
  // clipping and noise) is also written to DIR/round-R/USER.safetensors, so
  // that a partner can audit what it contributed. The files are as private
  // as the training text; USER is escaped into a file name (see
  // UpdateFileName).
  std::string save_updates_dir;
  // Fault injection, for tests only: in round `kill_round` the process sends
  // itself SIGKILL when the coordinator hands it the work of `kill_stage`
  // (keys: the invitation; shares, inputs, unmasking: the SecAgg+ message
  // that starts that stage), before answering. 0: never.
  int64_t kill_round = 0;
  std::string kill_stage;
};

// The file name under which a user's update is saved: bytes outside
// [A-Za-z0-9._@-] become %XX, so that any user id is a safe, unique name.
std::string UpdateFileName(const std::string& user_id);

struct ClientRunStats {
  int64_t rounds_finished = 0, rounds_committed = 0, residuals_uploaded = 0, reconnects = 0;
};

// Runs until `stop` is set or every user saw `rounds` rounds end. Sessions
// and vault must outlive the call. Errors only for what retrying cannot fix
// (bad TLS files, a refused join).
absl::StatusOr<ClientRunStats> RunClient(const ClientRunOptions& options, std::map<std::string, ClientSession*> sessions,
                                         const ResidualVault& vault, const std::atomic<bool>& stop);

}  // namespace fedpers

#endif  // FEDPERS_CLIENT_GRPC_CLIENT_H_
