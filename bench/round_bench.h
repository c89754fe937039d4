// `fedpers bench round`: the coordinator's own cost of a round (sampling,
// SecAgg+ server, decoding, strategy, ledger, atomic commit; client training
// excluded) and the bytes each client sends and receives, for the tiny
// model's global adapter. Torch-free.
#ifndef FEDPERS_BENCH_ROUND_BENCH_H_
#define FEDPERS_BENCH_ROUND_BENCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers {

struct RoundBenchFigure {
  int64_t clients = 0;
  int64_t adapter_values = 0;  // global adapter length (before rotation padding)
  double coordinator_seconds = 0;  // median over rounds
  double bytes_up_per_client = 0, bytes_down_per_client = 0;
  int64_t rounds = 0;
};

absl::StatusOr<std::vector<RoundBenchFigure>> RunRoundBench(std::vector<int64_t> client_counts, int64_t rounds,
                                                            bool progress);

}  // namespace fedpers

#endif  // FEDPERS_BENCH_ROUND_BENCH_H_
