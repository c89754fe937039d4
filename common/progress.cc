#include "common/progress.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_format.h"

namespace fedpers {

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit, FILE* out,
                         bool enabled)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      unit_(std::move(unit)),
      out_(out),
      enabled_(enabled),
      tty_(out != nullptr && ::isatty(::fileno(out))),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (enabled_ && !finished_ && last_done_ > 0 && tty_) std::fputc('\n', out_);
}

std::string ProgressBar::FormatDuration(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  if (s < 60) return absl::StrFormat("%.1fs", s);
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t < 3600) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%dh%02dm", t / 3600, (t % 3600) / 60);
}

void ProgressBar::Update(int64_t done, absl::string_view status) {
  if (!enabled_) return;
  if (start_done_ < 0) {
    // A resumed job starts at done > 1: rates count only the work done here.
    start_done_ = std::max<int64_t>(done - 1, 0);
  }
  last_done_ = done;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (done >= total_ || since >= (tty_ ? 0.1 : 10.0)) {
    last_draw_ = now;
    Draw(done, status, false);
  }
}

void ProgressBar::Finish(absl::string_view status) {
  if (!enabled_ || finished_) return;
  finished_ = true;
  Draw(last_done_, status, true);
}

void ProgressBar::Draw(int64_t done, absl::string_view status, bool final) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done - std::max<int64_t>(start_done_, 0)) / elapsed : 0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : -1;
  const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total_), 0.0, 1.0);
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
  std::string line = absl::StrFormat("%s [%s] %3.0f%% %d/%d %s", label_, bar, 100 * frac, done,
                                     total_, unit_);
  if (!status.empty()) line += absl::StrFormat(" | %s", status);
  line += absl::StrFormat(" | %.2f %s/s", rate, unit_);
  line += final ? absl::StrFormat(" | took %s", FormatDuration(elapsed))
                : absl::StrFormat(" | ETA %s", FormatDuration(eta));
  if (tty_) {
    std::fprintf(out_, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(out_, "%s\n", line.c_str());
  }
  std::fflush(out_);
}

}  // namespace fedpers
