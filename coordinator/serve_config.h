// `fedpers coordinator serve --config FILE`: the JSON configuration.
//
// {
//   "listen": "127.0.0.1:7443",
//   "state_dir": "runs/coordinator",
//   "base": "runs/base",                  // model directory: its config.json fixes the layout
//   "lora": {"global_rank": 8, ...},      // optional, as in the LoRA config
//   "tls": {"cert": "...", "key": "...", "ca": "..."},   // or "insecure": true
//   "round": {"clients_per_round": 10, "min_clients": 3, "ring_bits": 0, "clip_norm": 1.0,
//             "noise_multiplier": 0.0, "central_noise": false, "rotate": true, "threshold": 0,
//             "strategy": "fedavg", "server_learning_rate": 1.0, "delta": 1e-5, "epsilon_budget": 10},
//   "stage_timeout_ms": 30000, "round_interval_ms": 0, "max_rounds": 0, "liveness_timeout_ms": 30000,
//   "start_paused": false, "admin_page_bytes": 1048576
// }
// Unknown keys are errors that name the key.
#ifndef FEDPERS_COORDINATOR_SERVE_CONFIG_H_
#define FEDPERS_COORDINATOR_SERVE_CONFIG_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/flat_layout.h"
#include "coordinator/grpc_server.h"
#include "coordinator/runtime.h"

namespace fedpers {

struct ServeConfig {
  ServeOptions serve;
  RuntimeSettings runtime;
  std::string state_dir;
  FlatLayout layout;
};

absl::StatusOr<ServeConfig> ParseServeConfig(const std::string& json_text, const std::string& config_dir);

}  // namespace fedpers

#endif  // FEDPERS_COORDINATOR_SERVE_CONFIG_H_
