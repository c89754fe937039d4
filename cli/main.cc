// fedpers: federated personalization of language models. Wiring only: every
// subcommand calls into a library.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "common/model/runtime.h"
#include "common/utf8.h"

namespace fedpers::cli {

void Fail(const std::string& message) {
  throw CLI::RuntimeError("error: " + message, 1);
}

namespace {

// What an integer option refuses before CLI11 2.1 converts it: a value
// beyond the type (strtoll/strtoull clamp it, in any base, and CLI11 does not
// look at errno) and, for unsigned options, a negative one (strtoull negates
// it into a huge value). Text that is no integer is left to CLI11's message.
std::string IntegerProblem(const std::string& in, bool is_unsigned) {
  const size_t first = in.find_first_not_of(" \t");
  if (first == std::string::npos) return {};
  if (is_unsigned && in[first] == '-') return "'" + in + "' is negative";
  char* end = nullptr;
  errno = 0;
  if (is_unsigned) {
    (void)std::strtoull(in.c_str(), &end, 0);
  } else {
    (void)std::strtoll(in.c_str(), &end, 0);
  }
  if (end != in.c_str() + in.size()) return {};
  return errno == ERANGE ? "'" + in + "' is out of range" : std::string();
}

// Checks every option of `app` and its subcommands gets, whatever it is:
// - an integer option refuses values IntegerProblem names;
// - a text option refuses an empty value, which no option means anything by:
//   `--out ""` would write into the working directory, `--data ""` would
//   silently keep the config's corpus (leave an option out for its default).
void CheckEveryOptionValue(CLI::App& app) {
  static const CLI::Validator* signed_integer = new CLI::Validator(
      [](std::string& in) { return IntegerProblem(in, /*is_unsigned=*/false); }, /*validator_desc=*/"");
  static const CLI::Validator* unsigned_integer = new CLI::Validator(
      [](std::string& in) { return IntegerProblem(in, /*is_unsigned=*/true); }, /*validator_desc=*/"");
  static const CLI::Validator* non_empty = new CLI::Validator(
      [](std::string& in) -> std::string {
        return in.empty() ? "the value is empty (leave the option out for its default)" : std::string();
      },
      /*validator_desc=*/"");
  for (CLI::Option* option : app.get_options()) {
    const std::string type = option->get_type_name();
    if (type.rfind("INT", 0) == 0) option->check(*signed_integer);
    if (type.rfind("UINT", 0) == 0) option->check(*unsigned_integer);
    if (type.rfind("TEXT", 0) == 0) option->check(*non_empty);
  }
  for (CLI::App* sub : app.get_subcommands({})) CheckEveryOptionValue(*sub);
}

// A validator of numbers with `accept`, saying "must be <what>, got X".
CLI::Validator NumberCheck(const std::string& what, bool (*accept)(double)) {
  return CLI::Validator(
      [what, accept](std::string& in) -> std::string {
        double v = 0;
        if (!CLI::detail::lexical_cast(in, v)) return "'" + in + "' is not a number";
        return accept(v) ? std::string() : "must be " + what + ", got " + in;
      },
      what == "positive" ? "POSITIVE" : "NONNEGATIVE");
}

}  // namespace

const CLI::Validator& Positive() {
  static const CLI::Validator* v = new CLI::Validator(NumberCheck("positive", [](double x) { return x > 0; }));
  return *v;
}

const CLI::Validator& NonNegative() {
  static const CLI::Validator* v = new CLI::Validator(NumberCheck(">= 0", [](double x) { return x >= 0; }));
  return *v;
}

void AddTrainingMemoryFlags(CLI::App* cmd, int64_t* micro_batch_size, bool* recompute_activations) {
  cmd->add_option("--micro-batch-size", *micro_batch_size,
                  "Windows per forward/backward pass (0: the whole batch); less memory, the same step")
      ->capture_default_str()
      ->check(NonNegative())
      ->group("Training memory");
  cmd->add_flag("--recompute-activations", *recompute_activations,
                "Keep only each block's input in the forward pass and recompute the rest in backward "
                "(less memory, one more forward pass)")
      ->group("Training memory");
}

}  // namespace fedpers::cli

int main(int argc, char** argv) {
  using namespace fedpers::cli;
  CLI::App app{
      "fedpers: federated personalization of language models.\n"
      "Clients fine-tune LoRA adapters on private text; a coordinator keeps a global adapter\n"
      "and a per-user residual. Run `fedpers <command> --help` for each command."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "fedpers 0.1.0");
  GlobalOptions global;
  // Far beyond the cores, thread pools only thrash (2,000 on two cores hung).
  constexpr int kMaxThreads = 256;
  app.add_option("--threads", global.threads, "Compute threads (0: every available core)")
      ->check(CLI::Range(0, kMaxThreads));
  app.add_flag("-q,--quiet", global.quiet, "No progress bars");
  app.parse_complete_callback([&] { fedpers::InitTorchRuntime(global.threads, /*warn=*/true); });
  RegisterPretrain(app, global);
  RegisterFinetune(app, global);
  RegisterBench(app, global);
  RegisterData(app, global);
  RegisterPki(app, global);
  RegisterFederation(app, global);
  RegisterSimulate(app, global);
  CheckEveryOptionValue(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::RuntimeError& e) {
    // Messages quote peers, files and the coordinator: nothing in them may
    // act on the terminal.
    if (e.what()[0] != '\0') {
      std::fprintf(stderr, "%s\n", fedpers::EscapeForTerminal(e.what(), /*keep_line_breaks=*/true).c_str());
    }
    return e.get_exit_code();
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    // What the up-front memory checks could not foresee (another process
    // taking the memory, an address-space limit): an error, not an abort.
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    // A library error that escaped its Status conversion (e.g. libtorch's):
    // a bug to report, but the process still exits with a message.
    std::fprintf(stderr, "error: internal error: %s\n",
                 fedpers::EscapeForTerminal(e.what(), /*keep_line_breaks=*/true).c_str());
    return 1;
  }
  return 0;
}
