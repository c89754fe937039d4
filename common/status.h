// Status helpers used at every module boundary.
//
// Errors travel as absl::Status / absl::StatusOr<T>. These macros keep the
// happy path readable without hiding control flow.
#ifndef FEDPERS_COMMON_STATUS_H_
#define FEDPERS_COMMON_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FEDPERS_STATUS_CONCAT_INNER_(a, b) a##b
#define FEDPERS_STATUS_CONCAT_(a, b) FEDPERS_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status); returns it from the enclosing function
// when it is not OK.
#define FEDPERS_RETURN_IF_ERROR(expr)                     \
  do {                                                    \
    ::absl::Status fedpers_status_ = (expr);              \
    if (!fedpers_status_.ok()) return fedpers_status_;    \
  } while (0)

// Evaluates `rexpr` (an absl::StatusOr<T>); returns its status when not OK,
// otherwise moves the value into `lhs` (which may be a declaration).
#define FEDPERS_ASSIGN_OR_RETURN(lhs, rexpr)                                 \
  FEDPERS_ASSIGN_OR_RETURN_IMPL_(                                            \
      FEDPERS_STATUS_CONCAT_(fedpers_statusor_, __LINE__), lhs, rexpr)
#define FEDPERS_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // FEDPERS_COMMON_STATUS_H_
