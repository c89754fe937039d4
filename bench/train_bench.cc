#include "bench/train_bench.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/model/gpt2.h"
#include "common/model/runtime.h"
#include "common/model/trainer.h"
#include "common/progress.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace fedpers {
namespace {

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]));
}

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Model FLOPs of one LoRA training step (multiply-add = 2 FLOPs), counting
// what the step must compute: the forward pass, the input gradients of the
// backward pass (frozen base weights need no weight gradients), and the LoRA
// factors' gradients. Attention counts the full T x T products.
double FlopsPerLoraStep(const ModelConfig& c, int64_t batch, int64_t seq, int64_t r_g, int64_t r_u) {
  const double n = static_cast<double>(batch * seq), d = static_cast<double>(c.n_embd);
  const double f = static_cast<double>(c.inner_dim()), t = static_cast<double>(seq);
  const double v = static_cast<double>(c.vocab_size), L = static_cast<double>(c.n_layer);
  const double proj = 2 * n * (d * 3 * d + d * d + d * f + f * d);       // per layer
  const double attn = 2 * 2 * n * t * d;                                  // QK^T and AV
  const double head = 2 * n * d * v;
  const double forward = L * (proj + attn) + head;
  // Backward input gradients: one GEMM per projection and the head; two per
  // attention product.
  const double backward = L * (proj + 2 * attn) + head;
  double lora = 0;
  const std::array<std::pair<double, double>, 4> dims = {{{d, 3 * d}, {d, d}, {d, f}, {f, d}}};
  for (auto [in, out] : dims) {
    const double rg = static_cast<double>(r_g), ru = static_cast<double>(r_u);
    const double fwd = 2 * n * (in * rg + rg * out) + 2 * n * (in * ru + ru * out);
    const double bwd_input = fwd;
    const double grads = 2 * n * rg * out + 2 * n * (ru * out + ru * in);
    lora += L * (fwd + bwd_input + grads);
  }
  return forward + backward + lora;
}

// The best of a few 2048^3 fp32 GEMMs: a peak, so a noisy moment on a
// shared machine lowers it less than a median would (and never inflates MFU).
double MeasureGemmPeak() {
  const int64_t n = 2048;
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  double best = 1e30;
  for (int i = 0; i < 6; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    torch::mm_out(c, a, b);
    auto t1 = std::chrono::steady_clock::now();
    if (i >= 1) best = std::min(best, Seconds(t0, t1));
  }
  return 2.0 * n * n * n / best / 1e9;
}

absl::StatusOr<nlohmann::json> RunPeer(const TrainBenchOptions& o, const ModelConfig& c, int threads,
                                       std::string& note) {
  std::string script = o.peer_script.empty() ? std::string(FEDPERS_PEER_SCRIPT_DIR) + "/peer_torch_lora.py"
                                             : o.peer_script;
  if (!std::filesystem::exists(script)) {
    note = absl::StrCat("peer script not found at ", script);
    return absl::NotFoundError(note);
  }
  const std::string cmd = absl::StrCat(
      o.python, " ", script, " --threads ", threads, " --n-layer ", c.n_layer, " --n-embd ", c.n_embd,
      " --n-head ", c.n_head, " --n-positions ", o.seq_len > 0 ? o.seq_len : c.n_positions, " --vocab ",
      c.vocab_size, " --batch ", o.batch_size, " --global-rank ", o.global_rank, " --residual-rank ",
      o.residual_rank, " --warmup ", o.warmup_steps, " --steps ", o.steps, " 2>&1");
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    note = "cannot start python";
    return absl::UnavailableError(note);
  }
  std::string out;
  char buf[4096];
  while (size_t k = std::fread(buf, 1, sizeof(buf), pipe)) out.append(buf, k);
  const int rc = ::pclose(pipe);
  nlohmann::json j = nlohmann::json::parse(out.substr(out.find('{') == std::string::npos ? 0 : out.rfind('{')),
                                           nullptr, false);
  if (rc != 0 || j.is_discarded() || !j.contains("tokens_per_s")) {
    note = absl::StrCat("python peer failed (is python3-torch installed?): ", out.substr(0, 300));
    return absl::UnavailableError(note);
  }
  return j;
}

}  // namespace

absl::StatusOr<TrainBenchResult> RunTrainBench(const TrainBenchOptions& o) {
  // The CLI already warned about a slow BLAS at start-up.
  TorchRuntimeInfo rt = InitTorchRuntime(o.threads, /*warn=*/false);
  FEDPERS_ASSIGN_OR_RETURN(ModelConfig config, NamedModelConfig(o.config));
  LoraConfig lora;
  lora.global_rank = o.global_rank;
  lora.residual_rank = o.residual_rank;
  lora.global_alpha = 2.0 * static_cast<double>(o.global_rank);
  lora.residual_alpha = 2.0 * static_cast<double>(o.residual_rank);
  FEDPERS_ASSIGN_OR_RETURN(Gpt2LmHead model, CreateGpt2(config, lora));
  torch::manual_seed(0);
  model->InitBaseWeights();
  const int64_t seq = o.seq_len > 0 ? o.seq_len : config.n_positions;
  std::vector<int32_t> tokens(200000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 2654435761u) % 256);
  std::vector<torch::Tensor> params = model->BranchParameters(LoraBranch::kGlobal);
  for (torch::Tensor& t : model->BranchParameters(LoraBranch::kResidual)) params.push_back(t);

  TrainBenchResult r;
  r.config = o.config;
  r.threads = rt.threads;
  r.blas = rt.blas_library;
  r.batch_size = o.batch_size;
  r.seq_len = seq;
  r.flops_per_step = FlopsPerLoraStep(config, o.batch_size, seq, o.global_rank, o.residual_rank);
  r.gemm_peak_gflops = MeasureGemmPeak();

  std::vector<double> cpp_times, peer_times;
  ProgressBar bar("bench train", o.rounds, "round", stderr, o.progress);
  for (int64_t round = 0; round < o.rounds; ++round) {
    TrainOptions topt;
    topt.steps = o.warmup_steps + o.steps;
    topt.batch_size = o.batch_size;
    topt.seq_len = seq;
    topt.warmup_steps = 0;
    FEDPERS_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Trainer::Create(model, params, tokens, topt));
    auto last = std::chrono::steady_clock::now();
    FEDPERS_RETURN_IF_ERROR(trainer->Run(topt.steps, [&](const StepStats& s) {
      auto now = std::chrono::steady_clock::now();
      if (s.step > o.warmup_steps) cpp_times.push_back(Seconds(last, now));
      last = now;
      return true;
    }));
    if (o.peer) {
      absl::StatusOr<nlohmann::json> peer = RunPeer(o, config, rt.threads, r.peer_note);
      if (peer.ok()) {
        peer_times.push_back((*peer)["median_step_seconds"].get<double>());
        r.peer_note = absl::StrCat("python torch ", (*peer)["torch_version"].get<std::string>());
      }
    }
    r.gemm_peak_gflops = std::max(r.gemm_peak_gflops, MeasureGemmPeak());
    bar.Update(round + 1);
  }
  bar.Finish();
  r.step_seconds = Median(cpp_times);
  r.tokens_per_s = static_cast<double>(o.batch_size * seq) / r.step_seconds;
  r.achieved_gflops = r.flops_per_step / r.step_seconds / 1e9;
  r.mfu = r.achieved_gflops / r.gemm_peak_gflops;
  if (!peer_times.empty()) {
    r.peer_ran = true;
    r.peer_step_seconds = Median(peer_times);
    r.peer_tokens_per_s = static_cast<double>(o.batch_size * seq) / r.peer_step_seconds;
    r.peer_ratio = r.tokens_per_s / r.peer_tokens_per_s;
  }
  return r;
}

}  // namespace fedpers
