// `fedpers bench secagg`: SecAgg+ costs. Torch-free.
#ifndef FEDPERS_BENCH_SECAGG_BENCH_H_
#define FEDPERS_BENCH_SECAGG_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fedpers {

struct SecAggBenchOptions {
  bool include_largest = true;  // n = 1000 at m = 10^6 (about a minute of client masking)
  bool progress = true;
};

struct UnmaskingFigure {
  uint32_t n = 0, degree = 0, threshold = 0;
  uint64_t m = 0;
  uint32_t survivors = 0, dropped_with_masks = 0;
  uint32_t self_masks = 0, pairwise_masks = 0;
  double unmask_seconds = 0;          // SecAggServer::Finish
  double ns_per_element_per_mask = 0;  // unmask time / (m * masks removed)
  size_t server_state_bytes = 0;      // peak of SecAggServer::MemoryBytes over the session
  bool correct = false;               // output equals the plain modular sum
};

struct SecAggBenchResult {
  // Client masking: ns per element per mask at m = 2^20, 16-bit ring, and the
  // raw AES-256-CTR keystream cost for the same bytes (the limit).
  double client_mask_ns_per_element = 0;
  double aes_ctr_ns_per_element = 0;
  std::vector<UnmaskingFigure> unmasking;
  // Upload of one client over the whole protocol at n = 2^10, m = 2^20,
  // 16-bit inputs in a 26-bit ring, divided by m x 16 bits.
  uint64_t upload_bytes = 0;
  double upload_expansion = 0;
  uint32_t upload_degree = 0;
};

absl::StatusOr<SecAggBenchResult> RunSecAggBench(const SecAggBenchOptions& options);

}  // namespace fedpers

#endif  // FEDPERS_BENCH_SECAGG_BENCH_H_
