// Progress reporting for long work: a redrawn bar on a terminal, periodic
// lines otherwise (CI logs), with rate and ETA.
#ifndef FEDPERS_COMMON_PROGRESS_H_
#define FEDPERS_COMMON_PROGRESS_H_

#include "absl/strings/string_view.h"
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace fedpers {

// Not thread-safe: one owner calls Update from one thread.
class ProgressBar {
 public:
  // `total` units of work, named `unit` ("step", "round", ...). Writes to
  // `out` (stderr by default); `enabled` false makes every call a no-op.
  ProgressBar(std::string label, int64_t total, std::string unit = "step",
              FILE* out = stderr, bool enabled = true);
  ~ProgressBar();

  // Reports that `done` units are finished; `status` (e.g. "loss 2.31") is
  // shown after the counts. Redraws at most 10 times a second on a terminal
  // and every 10 s otherwise; always draws the last unit.
  void Update(int64_t done, absl::string_view status = {});
  // Draws the final state and ends the line.
  void Finish(absl::string_view status = {});

  // "1h02m", "3m07s", "12.3s".
  static std::string FormatDuration(double seconds);

 private:
  void Draw(int64_t done, absl::string_view status, bool final);

  std::string label_;
  int64_t total_;
  std::string unit_;
  FILE* out_;
  bool enabled_;
  bool tty_;
  bool finished_ = false;
  int64_t start_done_ = -1;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
  int64_t last_done_ = 0;
};

}  // namespace fedpers

#endif  // FEDPERS_COMMON_PROGRESS_H_
