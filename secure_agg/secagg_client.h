// The client side of SecAgg+ as an explicit state machine. It takes server
// messages and returns the client's replies; it never talks to a network.
//
//   kNew --Start()--> kAwaitingKeys --KeysBroadcast--> kAwaitingShares
//       --SharesForward--> kAwaitingUnmasking --UnmaskingRequest--> kDone
//
// Any message that is malformed, out of order, from another session, or
// that would make the client reveal more than the protocol allows moves it
// to kAborted with a status that says why; it then answers nothing.
#ifndef FEDPERS_SECURE_AGG_SECAGG_CLIENT_H_
#define FEDPERS_SECURE_AGG_SECAGG_CLIENT_H_

#include <map>
#include <optional>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "fedpers/v1/secagg.pb.h"
#include "secure_agg/secagg_common.h"

namespace fedpers::secagg {

enum class ClientState { kNew, kAwaitingKeys, kAwaitingShares, kAwaitingUnmasking, kDone, kAborted };

// One client's run of one session. Owns its key pairs, its self-mask seed
// and the shares it holds for its neighbours. Not thread-safe.
class SecAggClient {
 public:
  // `input` is the client's vector already encoded in Z_(2^b) (m values),
  // or empty to provide it later with SetInput (a client can exchange keys
  // while it still trains). InvalidArgument for bad parameters, an id
  // outside [1, n] or an input of the wrong length or outside the ring.
  static absl::StatusOr<SecAggClient> Create(fedpers::v1::SecAggParams params, uint32_t client_id,
                                             std::vector<uint32_t> input = {});
  // Sets the input before the masked-input round (the SharesForward
  // message); the same checks as Create. The client frees it once masked.
  absl::Status SetInput(std::vector<uint32_t> input);

  // Round 0: generates the key pairs and returns AdvertiseKeys.
  absl::StatusOr<fedpers::v1::SecAggClientMessage> Start();

  // Handles one server message and returns the reply. On error the client
  // is kAborted and every later call fails.
  absl::StatusOr<fedpers::v1::SecAggClientMessage> Handle(const fedpers::v1::SecAggServerMessage& message);

  ClientState state() const { return state_; }
  uint32_t client_id() const { return id_; }
  const absl::Status& abort_status() const { return abort_status_; }

 private:
  SecAggClient() = default;
  absl::StatusOr<fedpers::v1::SecAggClientMessage> HandleKeys(const fedpers::v1::KeysBroadcast& m);
  absl::StatusOr<fedpers::v1::SecAggClientMessage> HandleShares(const fedpers::v1::SharesForward& m);
  absl::StatusOr<fedpers::v1::SecAggClientMessage> HandleUnmasking(const fedpers::v1::UnmaskingRequest& m);
  absl::Status Abort(absl::Status why);

  fedpers::v1::SecAggParams params_;
  uint32_t id_ = 0;
  std::vector<uint32_t> input_;
  bool has_input_ = false;
  ClientState state_ = ClientState::kNew;
  absl::Status abort_status_;

  std::optional<X25519KeyPair> encryption_keys_, masking_keys_;
  Key32 self_seed_{};
  Bytes session_id_;
  std::vector<uint32_t> neighbours_;                   // from the graph
  std::map<uint32_t, fedpers::v1::PeerKeys> peer_keys_;  // advertised neighbours
  std::map<uint32_t, ShareBundle> held_;               // shares received in round 1 (U2 of my neighbourhood)
  ShamirShare own_seed_share_;                         // this client's share of its own seed
};

}  // namespace fedpers::secagg

#endif  // FEDPERS_SECURE_AGG_SECAGG_CLIENT_H_
