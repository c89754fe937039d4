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
