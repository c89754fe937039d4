// What an experiment leaves in its run directory, and how it reads on a
// terminal: metrics.jsonl (a line per round, written as the run goes),
// config.json, users.csv, summary.json, plots (PNG and SVG, drawn with
// gnuplot) and report.md linking them. Torch-free.
#ifndef FEDPERS_SIMULATIONS_REPORT_H_
#define FEDPERS_SIMULATIONS_REPORT_H_

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "simulations/experiment.h"

namespace fedpers {

nlohmann::ordered_json RoundRecordToJson(const RoundRecord& record);
nlohmann::ordered_json MethodResultToJson(const MethodResult& method);
nlohmann::ordered_json ExperimentSummaryJson(const ExperimentResult& result);

// A finished method in full (its summary, every user's result and its round
// records), and back: what lets a rerun of an experiment reuse the method.
// The comparisons with other methods (improved_over_*,
// accuracy_gain_over_*) are not stored: they depend on the other methods. Parsing errors are DataLoss naming the field.
nlohmann::ordered_json MethodRecordJson(const MethodResult& method, const std::vector<RoundRecord>& rounds);
absl::Status MethodRecordFromJson(const nlohmann::json& json, MethodResult& method, std::vector<RoundRecord>& rounds);

// Records of finished work (a simulated method, a sweep point), reused by a
// later run only when made by the same build with the same inputs.
// `inputs` is what the work depended on (a config, users); the record's
// identity is {"build": ExecutableDigest(), "inputs": inputs}.
nlohmann::json RecordIdentity(nlohmann::json inputs);
// Writes {"identity": identity, "result": result} to `path` atomically.
absl::Status WriteFinishedRecord(const std::string& path, const nlohmann::json& identity,
                                 const nlohmann::ordered_json& result);
// The "result" of the record at `path` when its identity equals `identity`.
// NotFound when there is no record; FailedPrecondition saying why it cannot
// be reused otherwise (unreadable, not a record, another build, other
// inputs).
absl::StatusOr<nlohmann::json> ReadFinishedRecord(const std::string& path, const nlohmann::json& identity);

// Appends one JSON line per round record to a file, flushed per line so a
// long run can be followed (`tail -f`). Not thread-safe.
class MetricsLog {
 public:
  // Creates (truncates) `path`, making its directory.
  static absl::StatusOr<std::unique_ptr<MetricsLog>> Create(const std::string& path);
  ~MetricsLog();
  void Append(const RoundRecord& record);

 private:
  explicit MetricsLog(FILE* f) : file_(f) {}
  FILE* file_;
};

struct ReportFiles {
  std::vector<std::string> written;  // every file, report.md last
  std::vector<std::string> plots;    // the PNGs
  std::vector<std::string> warnings; // e.g. gnuplot missing: plots skipped
};

// Writes config.json, users.csv, summary.json, the plots and report.md into
// `run_dir`. Plots need gnuplot on PATH; without it the report says so and
// everything else is written.
absl::StatusOr<ReportFiles> WriteReport(const ExperimentResult& result, const std::string& run_dir);

// The results table (one row per method) for the terminal.
std::string ResultsTable(const ExperimentResult& result);

// Runs a gnuplot script; FailedPrecondition when gnuplot is not installed,
// Internal with its output when it fails.
absl::Status RunGnuplot(const std::string& script_path);

// "1.23 KiB", "4.5 MiB".
std::string HumanBytes(double bytes);

}  // namespace fedpers

#endif  // FEDPERS_SIMULATIONS_REPORT_H_
