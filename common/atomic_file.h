// Whole-file reads and crash-safe whole-file writes.
#ifndef FEDPERS_COMMON_ATOMIC_FILE_H_
#define FEDPERS_COMMON_ATOMIC_FILE_H_

#include "absl/strings/string_view.h"
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fedpers {

// Reads the whole file at `path`. NotFound when it does not exist; the error
// message names the path. Refuses files larger than `max_bytes`.
absl::StatusOr<std::string> ReadFileToString(
    const std::string& path, size_t max_bytes = size_t{1} << 36);

// Writes `contents` to `path` so that a crash at any point leaves either the
// old file or the complete new one: writes a temporary file in the same
// directory, fsyncs it, renames it over `path` and fsyncs the directory.
// Creates missing parent directories. Thread-compatible.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

// An exclusive advisory lock (flock) on a file, held until destruction, so
// that two processes do not use one state directory at once. The lock goes
// with the process, however it ends. Move-only.
class ExclusiveFileLock {
 public:
  // Creates `path` (and its parent directories) if absent and locks it
  // without waiting: FailedPrecondition naming `what_holds_it` when another
  // process holds it.
  static absl::StatusOr<ExclusiveFileLock> Acquire(const std::string& path, const std::string& what_holds_it);
  ExclusiveFileLock(ExclusiveFileLock&& other) noexcept;
  ExclusiveFileLock& operator=(ExclusiveFileLock&& other) noexcept;
  ExclusiveFileLock(const ExclusiveFileLock&) = delete;
  ExclusiveFileLock& operator=(const ExclusiveFileLock&) = delete;
  ~ExclusiveFileLock();

 private:
  explicit ExclusiveFileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace fedpers

#endif  // FEDPERS_COMMON_ATOMIC_FILE_H_
