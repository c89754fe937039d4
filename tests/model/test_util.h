// Shared fixtures of the model tests.
#ifndef FEDPERS_TESTS_MODEL_TEST_UTIL_H_
#define FEDPERS_TESTS_MODEL_TEST_UTIL_H_

#include <torch/torch.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include "common/model/gpt2.h"

namespace fedpers::testing {

// Small enough for a test, large enough to exercise every path.
inline ModelConfig SmallConfig() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_embd = 64;
  c.n_head = 4;
  c.n_positions = 32;
  return c;
}

// A randomly initialized base model (deterministic in `seed`).
inline Gpt2LmHead RandomModel(const LoraConfig& lora = LoraConfig(), uint64_t seed = 1,
                              const ModelConfig& config = SmallConfig()) {
  torch::manual_seed(seed);
  Gpt2LmHead m(config, lora);
  m->InitBaseWeights();
  return m;
}

// Fills every LoRA B (and residual A) with random values.
inline void RandomizeAdapters(Gpt2LmHead& m, uint64_t seed = 2) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (LoraBranch b : {LoraBranch::kGlobal, LoraBranch::kResidual}) {
    for (torch::Tensor& t : m->BranchParameters(b)) t.normal_(0.0, 0.05);
  }
}

inline torch::Tensor RandomIds(int64_t batch, int64_t len, uint64_t seed = 3) {
  torch::manual_seed(seed);
  return torch::randint(0, 256, {batch, len}, torch::kLong);
}

inline std::string TempPath(const std::string& name) {
  std::string p = ::testing::TempDir() + "/model_" + name + "_" + std::to_string(::getpid());
  std::filesystem::remove_all(p);
  return p;
}

}  // namespace fedpers::testing

#endif  // FEDPERS_TESTS_MODEL_TEST_UTIL_H_
