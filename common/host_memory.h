// What the machine can still give this process, for refusing work that
// cannot fit before it starts rather than meeting the kernel's OOM killer.
#ifndef FEDPERS_COMMON_HOST_MEMORY_H_
#define FEDPERS_COMMON_HOST_MEMORY_H_

#include <cstdint>

namespace fedpers {

// MemAvailable of /proc/meminfo in bytes (the kernel's estimate of what can
// be allocated without swapping); -1 where it cannot be read, in which case
// callers skip their check. Thread-safe.
int64_t AvailableMemoryBytes();

}  // namespace fedpers

#endif  // FEDPERS_COMMON_HOST_MEMORY_H_
