// The server side of SecAgg+ as an explicit state machine. The runtime feeds
// it client messages as they arrive and closes each round (at its deadline or
// when every expected client answered) with the matching Finish call.
//
//   kCollectingKeys --FinishKeys--> kCollectingShares --FinishShares-->
//   kCollectingInputs --FinishInputs--> kCollectingUnmasking --Finish--> kDone
//
// A bad message (wrong session, wrong round, unknown or repeated sender,
// malformed content) is refused with a status and changes nothing; a round
// that ends with too few participants moves the server to kAborted. Masked
// inputs are added to one running sum as they arrive and unmasking runs chunk
// by chunk, so memory stays O(m) for n clients. Not thread-safe.
#ifndef FEDPERS_SECURE_AGG_SECAGG_SERVER_H_
#define FEDPERS_SECURE_AGG_SECAGG_SERVER_H_

#include <map>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "fedpers/v1/secagg.pb.h"
#include "secure_agg/secagg_common.h"

namespace fedpers::secagg {

enum class ServerState { kCollectingKeys, kCollectingShares, kCollectingInputs, kCollectingUnmasking, kDone, kAborted };

// Outgoing messages of a round: recipient client id -> message.
using ServerMessages = std::map<uint32_t, fedpers::v1::SecAggServerMessage>;

struct SecAggServerStats {
  uint32_t advertised = 0, shared = 0, submitted = 0, unmasking_responses = 0;
  uint32_t self_masks_removed = 0, pairwise_masks_removed = 0;
};

class SecAggServer {
 public:
  static absl::StatusOr<SecAggServer> Create(fedpers::v1::SecAggParams params);

  // Round 0.
  absl::Status HandleAdvertiseKeys(const fedpers::v1::AdvertiseKeys& m);
  absl::StatusOr<ServerMessages> FinishKeys();
  // Round 1.
  absl::Status HandleShareKeys(const fedpers::v1::ShareKeys& m);
  absl::StatusOr<ServerMessages> FinishShares();
  // Round 2.
  absl::Status HandleMaskedInput(const fedpers::v1::MaskedInput& m);
  absl::StatusOr<ServerMessages> FinishInputs();
  // Round 3.
  absl::Status HandleUnmaskingResponse(const fedpers::v1::UnmaskingResponse& m);
  // Reconstructs the masks and returns the sum modulo 2^b of the inputs of
  // every client that sent a masked input (U3), even ones that answered no
  // unmasking request. Aborts if some secret lacks t consistent shares.
  absl::StatusOr<std::vector<uint32_t>> Finish();

  // Dispatches a client message to the Handle* of its type.
  absl::Status Handle(const fedpers::v1::SecAggClientMessage& m);

  ServerState state() const { return state_; }
  const absl::Status& abort_status() const { return abort_status_; }
  const SecAggServerStats& stats() const { return stats_; }
  const std::set<uint32_t>& survivors() const { return submitted_; }
  const fedpers::v1::SecAggParams& params() const { return params_; }
  // Bytes of state the server holds now: the running sum (4 m) plus keys,
  // forwarded shares and revealed shares (O(n k)). Approximate.
  size_t MemoryBytes() const;

 private:
  SecAggServer() = default;
  absl::Status Abort(absl::Status why);
  absl::Status CheckSender(uint32_t id, const std::string& session, ServerState round) const;

  fedpers::v1::SecAggParams params_;
  std::vector<std::vector<uint32_t>> graph_;
  ServerState state_ = ServerState::kCollectingKeys;
  absl::Status abort_status_;
  SecAggServerStats stats_;
  std::string session_id_;

  std::map<uint32_t, fedpers::v1::PeerKeys> keys_;                 // U1
  std::map<uint32_t, std::vector<fedpers::v1::EncryptedShare>> shares_;  // U2: sender -> bundles
  std::map<uint32_t, std::set<uint32_t>> included_;              // survivor -> peers it masked with
  std::set<uint32_t> submitted_;                                 // U3
  std::vector<uint32_t> sum_;                                    // running sum of masked inputs
  std::set<uint32_t> responded_;                                 // U4
  // owner -> shares revealed of its self-mask seed / masking key.
  std::map<uint32_t, std::vector<ShamirShare>> seed_shares_, key_shares_;
};

}  // namespace fedpers::secagg

#endif  // FEDPERS_SECURE_AGG_SECAGG_SERVER_H_
