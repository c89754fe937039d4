// Which build of fedpers is running, so records of finished work (sweep
// points, simulated methods) are reused only by the build that made them.
#ifndef FEDPERS_COMMON_BUILD_IDENTITY_H_
#define FEDPERS_COMMON_BUILD_IDENTITY_H_

#include <string>

namespace fedpers {

// Hex SHA-256 of the running executable (/proc/self/exe), computed once per
// process by streaming the file; "" where it cannot be read, which callers
// treat as matching no record. Thread-safe.
const std::string& ExecutableDigest();

}  // namespace fedpers

#endif  // FEDPERS_COMMON_BUILD_IDENTITY_H_
