// `fedpers bench ...`: benchmarks that print medians and side-by-side ratios.
#include <iostream>

#include "absl/strings/str_format.h"
#include "bench/train_bench.h"
#include "cli/commands.h"
#include "common/table.h"
#include "nlohmann/json.hpp"

namespace fedpers::cli {

void RegisterBench(CLI::App& app, const GlobalOptions& global) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (medians, side-by-side ratios)");
  bench->require_subcommand(1);

  auto* train = bench->add_subcommand(
      "train", "LoRA training step: tokens/s, GFLOP/s, MFU against the measured GEMM peak, and the "
               "ratio to the same step in Python PyTorch");
  auto o = std::make_shared<TrainBenchOptions>();
  auto json = std::make_shared<bool>(false);
  auto no_peer = std::make_shared<bool>(false);
  train->add_option("--config", o->config, "Model config")->capture_default_str();
  train->add_option("--batch-size", o->batch_size, "Windows per step")->capture_default_str();
  train->add_option("--seq-len", o->seq_len, "Window length (0: n_positions)")->capture_default_str();
  train->add_option("--global-rank", o->global_rank, "r_g")->capture_default_str();
  train->add_option("--residual-rank", o->residual_rank, "r_u")->capture_default_str();
  train->add_option("--steps", o->steps, "Timed steps per round")->capture_default_str();
  train->add_option("--warmup", o->warmup_steps, "Untimed steps per round")->capture_default_str();
  train->add_option("--rounds", o->rounds, "Rounds, alternating C++ and Python")->capture_default_str();
  train->add_option("--python", o->python, "Python with torch, for the peer")->capture_default_str();
  train->add_flag("--no-peer", *no_peer, "Skip the Python PyTorch peer");
  train->add_flag("--json", *json, "Print one JSON object");
  train->callback([o, json, no_peer, &global] {
    o->threads = global.threads;
    o->peer = !*no_peer;
    o->progress = !global.quiet && !*json;
    absl::StatusOr<TrainBenchResult> r = RunTrainBench(*o);
    if (!r.ok()) Fail(std::string(r.status().message()));
    if (*json) {
      nlohmann::json j = {{"config", r->config},
                          {"threads", r->threads},
                          {"blas", r->blas},
                          {"batch_size", r->batch_size},
                          {"seq_len", r->seq_len},
                          {"step_seconds", r->step_seconds},
                          {"tokens_per_s", r->tokens_per_s},
                          {"flops_per_step", r->flops_per_step},
                          {"achieved_gflops", r->achieved_gflops},
                          {"gemm_peak_gflops", r->gemm_peak_gflops},
                          {"mfu", r->mfu},
                          {"peer", r->peer_note},
                          {"peer_tokens_per_s", r->peer_ran ? nlohmann::json(r->peer_tokens_per_s) : nlohmann::json()},
                          {"peer_ratio", r->peer_ran ? nlohmann::json(r->peer_ratio) : nlohmann::json()}};
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::cout << absl::StrFormat("LoRA training step, %s, batch %d x %d, %d threads, BLAS %s\n\n", r->config,
                                 r->batch_size, r->seq_len, r->threads, r->blas);
    Table t({"figure", "value"});
    t.AddRow({"step time (median)", absl::StrFormat("%.1f ms", 1e3 * r->step_seconds)});
    t.AddRow({"tokens/s", absl::StrFormat("%.0f", r->tokens_per_s)});
    t.AddRow({"model GFLOP per step", absl::StrFormat("%.2f", r->flops_per_step / 1e9)});
    t.AddRow({"achieved GFLOP/s", absl::StrFormat("%.1f", r->achieved_gflops)});
    t.AddRow({"fp32 GEMM peak GFLOP/s (measured)", absl::StrFormat("%.1f", r->gemm_peak_gflops)});
    t.AddRow({"MFU (target >= 0.5)", absl::StrFormat("%.3f", r->mfu)});
    if (r->peer_ran) {
      t.AddRow({"Python PyTorch tokens/s", absl::StrFormat("%.0f", r->peer_tokens_per_s)});
      t.AddRow({"C++ / Python (target >= 1.2)", absl::StrFormat("%.3f", r->peer_ratio)});
    } else {
      t.AddRow({"Python PyTorch peer", "not run: " + r->peer_note});
    }
    std::cout << t.Render();
  });
}

}  // namespace fedpers::cli
