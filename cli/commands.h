// Subcommand registration for the fedpers CLI. Each Register* adds one
// subcommand (with its options and callback) to `app`; the callback returns
// the process exit code through CLI::RuntimeError.
#ifndef FEDPERS_CLI_COMMANDS_H_
#define FEDPERS_CLI_COMMANDS_H_

#include <cstdint>

#include "CLI/CLI.hpp"

namespace fedpers::cli {

// Options every subcommand sees.
struct GlobalOptions {
  int threads = 0;  // 0: every available core
  bool quiet = false;
};

void RegisterPretrain(CLI::App& app, const GlobalOptions& global);
void RegisterFinetune(CLI::App& app, const GlobalOptions& global);
void RegisterBench(CLI::App& app, const GlobalOptions& global);
void RegisterData(CLI::App& app, const GlobalOptions& global);
void RegisterPki(CLI::App& app, const GlobalOptions& global);
void RegisterFederation(CLI::App& app, const GlobalOptions& global);
void RegisterSimulate(CLI::App& app, const GlobalOptions& global);

// Checks of numeric flags whose messages read "--steps: must be positive,
// got -1" (CLI11's PositiveNumber prints the whole of DBL_MAX).
const CLI::Validator& Positive();
const CLI::Validator& NonNegative();

// Prints "error: <message>" to stderr and exits the subcommand with code 1.
[[noreturn]] void Fail(const std::string& message);

// --micro-batch-size and --recompute-activations, the two settings that bound
// a training command's activation memory (TrainOptions). The pointees must
// outlive `cmd`'s parsing.
void AddTrainingMemoryFlags(CLI::App* cmd, int64_t* micro_batch_size, bool* recompute_activations);

}  // namespace fedpers::cli

#endif  // FEDPERS_CLI_COMMANDS_H_
