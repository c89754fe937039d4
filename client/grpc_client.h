// The client side of the Federation gRPC service: a connection as one
// client identity (mutual TLS), and the client process's loop over it: join
// with its users, restore their sealed residuals, poll, train and answer
// SecAgg+ rounds through each user's ClientSession, upload sealed residuals,
// reconnect with exponential backoff.
#ifndef FEDPERS_CLIENT_GRPC_CLIENT_H_
#define FEDPERS_CLIENT_GRPC_CLIENT_H_

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client_session.h"
#include "client/residual_vault.h"
#include "common/pki.h"
#include "fedpers/v1/federation.pb.h"

namespace fedpers {

struct ConnectionOptions {
  std::string coordinator;                   // host:port
  std::string cert_file, key_file, ca_file;  // mutual TLS, checked by LoadTlsIdentity
  CertRole role = CertRole::kClient;         // the role the certificate must have
  bool insecure = false;                     // no TLS: local experiments only (warns)
  std::string insecure_identity;             // the client name claimed without TLS
  int max_message_bytes = 64 << 20;
};

// One channel to the coordinator. Errors are mapped from gRPC: Unavailable
// (retrying may help), PermissionDenied, FailedPrecondition, InvalidArgument,
// NotFound, ... with the coordinator's message. Thread-safe (gRPC stubs are).
class CoordinatorConnection {
 public:
  // Reads the certificate files; the channel connects lazily.
  static absl::StatusOr<std::unique_ptr<CoordinatorConnection>> Open(const ConnectionOptions& options);
  ~CoordinatorConnection();

  absl::StatusOr<fedpers::v1::JoinResponse> Join(const fedpers::v1::JoinRequest& request);
  // The users stop taking part until they join again (see LeaveRequest).
  absl::Status Leave(const std::vector<std::string>& user_ids);
  absl::StatusOr<fedpers::v1::PollResponse> Poll(const std::string& user_id);
  absl::Status Upload(const fedpers::v1::SecAggUpload& upload);
  // Stores a residual blob (sealed unless `sealed` is false) in chunks;
  // returns the coordinator's version number for it.
  absl::StatusOr<int64_t> PutResidual(const std::string& user_id, std::span<const uint8_t> blob, bool sealed);
  // The blob of `version` (0: the latest); NotFound when there is none.
  absl::StatusOr<std::vector<uint8_t>> GetResidual(const std::string& user_id, int64_t version = 0);
  // Deletes every version; returns how many there were.
  absl::StatusOr<int64_t> DeleteResidual(const std::string& user_id);

 private:
  struct Impl;
  explicit CoordinatorConnection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ClientRunOptions {
  ConnectionOptions connection;
  int64_t rounds = 0;  // stop once every user saw this many rounds end (0: run until stopped)
  bool upload_residuals = true;
  // On the first join, fetch each user's latest sealed residual from the
  // coordinator and continue from it (a client that restarted, or moved
  // machines with its key, loses nothing). A stored residual this client
  // cannot use (sealed under another key, or for another layout) stops the
  // run with FailedPrecondition, since training on would shadow it with a
  // fresh one, unless `replace_unusable_residuals`: then the user starts
  // fresh and the stored versions stay at the coordinator until deleted.
  bool restore_residuals = true;
  bool replace_unusable_residuals = false;
  int max_backoff_ms = 5000;
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
  int64_t rounds_finished = 0, rounds_committed = 0, residuals_uploaded = 0, residuals_restored = 0,
          reconnects = 0;
};

// Runs until `stop` is set or every user saw `rounds` rounds end; the users'
// sessions train in turn on `model`. Sessions and vault must outlive the call. Errors only for what retrying cannot fix
// (bad TLS files, a refused join). Logs one line per residual upload and
// restore to stderr, with the SHA-256 of the plain residual file.
absl::StatusOr<ClientRunStats> RunClient(const ClientRunOptions& options, Gpt2LmHead model,
                                         std::map<std::string, ClientSession*> sessions, const ResidualVault& vault,
                                         const std::atomic<bool>& stop);

}  // namespace fedpers

#endif  // FEDPERS_CLIENT_GRPC_CLIENT_H_
