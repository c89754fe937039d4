// `fedpers pretrain` and `fedpers finetune`.
#include <cmath>
#include <cstdio>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "common/corpus.h"
#include "common/model/jobs.h"
#include "common/table.h"
#include "nlohmann/json.hpp"

namespace fedpers::cli {
namespace {

nlohmann::json MetricsJson(const EvalMetrics& m) {
  return {{"loss", m.loss}, {"perplexity", m.perplexity}, {"accuracy", m.accuracy}, {"tokens", m.tokens}};
}

}  // namespace

void RegisterPretrain(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("pretrain", "Train a base model from scratch on a corpus (byte-level GPT-2)");
  auto o = std::make_shared<PretrainOptions>();
  auto json = std::make_shared<bool>(false);
  auto no_resume = std::make_shared<bool>(false);
  cmd->add_option("--corpus", o->corpus,
                  absl::StrCat("Corpus spec: ", kCorpusSpecForms))
      ->capture_default_str();
  cmd->add_option("--config", o->config,
                  "Model config: tiny, small, or a config.json path (with \"fedpers_tokenizer\": \"byte\")")
      ->capture_default_str();
  cmd->add_option("--out", o->out, "Output model directory (checkpoints go here too)")->required();
  cmd->add_option("--steps", o->steps, "Optimizer steps")->capture_default_str()->check(Positive());
  cmd->add_option("--batch-size", o->batch_size, "Windows per step")->capture_default_str()->check(Positive());
  cmd->add_option("--lr", o->learning_rate, "Peak learning rate (warmup, then cosine)")->capture_default_str();
  AddTrainingMemoryFlags(cmd, &o->micro_batch_size, &o->recompute_activations);
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
  cmd->add_option("--checkpoint-every", o->checkpoint_every, "Steps between checkpoints")->capture_default_str()->check(Positive());
  cmd->add_option("--eval-tokens", o->eval_tokens, "Held-out tokens evaluated at the end")->capture_default_str()->check(NonNegative());
  cmd->add_option("--exclude-user", o->exclude_users, "A user to keep out of pretraining (repeatable)");
  cmd->add_option("--seed", o->seed, "Seed of initialization and batch order")->capture_default_str();
  cmd->add_flag("--no-resume", *no_resume, "Start fresh even if --out holds a checkpoint");
  cmd->add_flag("--json", *json, "Print the result as one JSON object");
  cmd->callback([o, json, no_resume, &global] {
    o->resume = !*no_resume;
    o->progress = !global.quiet;
    absl::StatusOr<PretrainResult> r = RunPretrain(*o);
    if (!r.ok()) Fail(std::string(r.status().message()));
    if (*json) {
      // A finished run that is only evaluated trained nothing here.
      auto number_or_null = [](double v, bool known) {
        return known ? nlohmann::json(v) : nlohmann::json(nullptr);
      };
      nlohmann::json j = {
          {"model_dir", r->model_dir},
          {"steps", r->steps},
          {"resumed_at_step", r->resumed_at_step},
          {"already_complete", r->already_complete},
          {"users", r->users},
          {"train_tokens", r->train_tokens},
          {"parameters", r->parameters},
          {"final_train_loss", number_or_null(r->final_train_loss, std::isfinite(r->final_train_loss))},
          {"eval", MetricsJson(r->eval)},
          {"seconds", r->seconds},
          {"tokens_per_second", number_or_null(r->tokens_per_second, !r->already_complete)}};
      std::cout << j.dump(2) << "\n";
      return;
    }
    Table t({"metric", "value"});
    t.AddRow({"users", absl::StrFormat("%d", r->users)});
    t.AddRow({"parameters", absl::StrFormat("%d", r->parameters)});
    t.AddRow({"train tokens", absl::StrFormat("%d", r->train_tokens)});
    t.AddRow({"steps", absl::StrFormat("%d", r->steps)});
    if (r->already_complete) {
      t.AddRow({"resumed at step", "already complete: evaluated only"});
    } else if (r->resumed_at_step > 0) {
      t.AddRow({"resumed at step", absl::StrFormat("%d", r->resumed_at_step)});
    }
    t.AddRow({"train loss (last step)",
              std::isfinite(r->final_train_loss) ? absl::StrFormat("%.4f", r->final_train_loss) : "-"});
    t.AddRow({"held-out loss", absl::StrFormat("%.4f", r->eval.loss)});
    t.AddRow({"held-out perplexity", absl::StrFormat("%.3f", r->eval.perplexity)});
    t.AddRow({"held-out next-byte accuracy", absl::StrFormat("%.2f%%", 100 * r->eval.accuracy)});
    if (!r->already_complete)
      t.AddRow({"throughput (tokens/s)", absl::StrFormat("%.0f", r->tokens_per_second)});
    std::cout << t.Render() << "model: " << r->model_dir << "/model.safetensors\n";
  });
}

void RegisterFinetune(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("finetune", "Train one user's LoRA adapters locally and export them for PEFT");
  auto o = std::make_shared<FinetuneOptions>();
  auto json = std::make_shared<bool>(false);
  auto no_global = std::make_shared<bool>(false);
  auto no_residual = std::make_shared<bool>(false);
  cmd->add_option("--base", o->base, "Base model directory (from `fedpers pretrain`)")->required();
  cmd->add_option("--data", o->data, absl::StrCat("Corpus spec holding the user's text: ", kCorpusSpecForms))->required();
  cmd->add_option("--user", o->user, "User id in the corpus")->required();
  cmd->add_option("--out", o->out, "Output directory for adapters and PEFT exports")->required();
  cmd->add_flag("--no-global", *no_global, "Do not train the global adapter B_g");
  cmd->add_flag("--no-residual", *no_residual, "Do not train the residual adapter A_u, B_u");
  cmd->add_option("--targets", o->lora.targets, "LoRA targets")->capture_default_str()->delimiter(',');
  cmd->add_option("--global-rank", o->lora.global_rank, "Rank r_g of the global adapter")->capture_default_str();
  cmd->add_option("--global-alpha", o->lora.global_alpha, "alpha_g (scale alpha_g / r_g)")->capture_default_str();
  cmd->add_option("--global-seed", o->lora.global_seed, "Public seed of the frozen A_g")->capture_default_str();
  cmd->add_option("--residual-rank", o->lora.residual_rank, "Rank r_u of the residual")->capture_default_str();
  cmd->add_option("--residual-alpha", o->lora.residual_alpha, "alpha_u (scale alpha_u / r_u)")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Optimizer steps")->capture_default_str()->check(Positive());
  cmd->add_option("--batch-size", o->batch_size, "Windows per step")->capture_default_str()->check(Positive());
  cmd->add_option("--lr", o->learning_rate, "Peak learning rate")->capture_default_str();
  AddTrainingMemoryFlags(cmd, &o->micro_batch_size, &o->recompute_activations);
  cmd->add_option("--eval-tokens", o->eval_tokens, "Held-out tokens to evaluate (0: all)")->capture_default_str()->check(NonNegative());
  cmd->add_option("--seed", o->seed, "Seed")->capture_default_str();
  cmd->add_flag("--json", *json, "Print the result as one JSON object");
  cmd->callback([o, json, no_global, no_residual, &global] {
    o->train_global = !*no_global;
    o->train_residual = !*no_residual;
    o->progress = !global.quiet;
    absl::StatusOr<FinetuneResult> r = RunFinetune(*o);
    if (!r.ok()) Fail(std::string(r.status().message()));
    if (*json) {
      nlohmann::json j = {{"user", r->user}, {"train_tokens", r->train_tokens}, {"test_tokens", r->test_tokens},
                          {"trainable_parameters", r->trainable_parameters}, {"before", MetricsJson(r->before)},
                          {"after", MetricsJson(r->after)}, {"seconds", r->seconds}, {"written", r->written}};
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::cout << absl::StrFormat("user %s: %d train tokens, %d held-out tokens, %d trainable parameters\n\n",
                                 r->user, r->train_tokens, r->test_tokens, r->trainable_parameters);
    Table t({"held-out", "loss", "perplexity", "next-byte accuracy"});
    t.AddRow({"before", absl::StrFormat("%.4f", r->before.loss), absl::StrFormat("%.3f", r->before.perplexity),
              absl::StrFormat("%.2f%%", 100 * r->before.accuracy)});
    t.AddRow({"after", absl::StrFormat("%.4f", r->after.loss), absl::StrFormat("%.3f", r->after.perplexity),
              absl::StrFormat("%.2f%%", 100 * r->after.accuracy)});
    std::cout << t.Render() << "\nwritten:\n";
    for (const std::string& w : r->written) std::cout << "  " << w << "\n";
  });
}

}  // namespace fedpers::cli
