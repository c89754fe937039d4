#include "client/local_training.h"

#include "absl/strings/str_cat.h"

namespace fedpers {

absl::StatusOr<TrainingSchedule> ParseTrainingSchedule(absl::string_view name) {
  if (name == "joint") return TrainingSchedule::kJoint;
  if (name == "alternating") return TrainingSchedule::kAlternating;
  if (name == "residual-after-global") return TrainingSchedule::kResidualAfterGlobal;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown training schedule '", name, "' (joint, alternating or residual-after-global)"));
}

const char* TrainingScheduleName(TrainingSchedule schedule) {
  switch (schedule) {
    case TrainingSchedule::kJoint: return "joint";
    case TrainingSchedule::kAlternating: return "alternating";
    case TrainingSchedule::kResidualAfterGlobal: return "residual-after-global";
  }
  return "?";
}

}  // namespace fedpers
