// `fedpers bench train`: throughput and model-FLOP utilization of a LoRA
// training step, beside the same step in Python PyTorch. Torch-free header.
#ifndef FEDPERS_BENCH_TRAIN_BENCH_H_
#define FEDPERS_BENCH_TRAIN_BENCH_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace fedpers {

struct TrainBenchOptions {
  std::string config = "tiny";
  int64_t batch_size = 16;
  int64_t seq_len = 0;  // 0: n_positions
  int64_t global_rank = 8, residual_rank = 4;
  int64_t warmup_steps = 3;
  int64_t steps = 10;
  int64_t rounds = 2;  // C++ and Python alternate this many times
  int threads = 0;     // 0: every available core
  bool peer = true;    // run bench/peer_torch_lora.py beside
  std::string python = "/usr/bin/python3";
  std::string peer_script;  // default: the source tree's bench/peer_torch_lora.py
  bool progress = true;
};

struct TrainBenchResult {
  std::string config;
  int threads = 0;
  std::string blas;
  int64_t batch_size = 0, seq_len = 0;
  double step_seconds = 0;  // median over all timed C++ steps
  double tokens_per_s = 0;
  double flops_per_step = 0;  // model FLOPs of one step (see FlopsPerLoraStep)
  double achieved_gflops = 0;
  double gemm_peak_gflops = 0;  // best fp32 2048^3 GEMM, same threads, across rounds
  double mfu = 0;
  bool peer_ran = false;
  std::string peer_note;  // why the peer did not run, or its torch version
  double peer_step_seconds = 0, peer_tokens_per_s = 0;
  double peer_ratio = 0;  // C++ tokens/s over Python tokens/s
};

absl::StatusOr<TrainBenchResult> RunTrainBench(const TrainBenchOptions& options);

}  // namespace fedpers

#endif  // FEDPERS_BENCH_TRAIN_BENCH_H_
