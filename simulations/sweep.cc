#include "simulations/sweep.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/atomic_file.h"
#include "common/table.h"
#include "coordinator/privacy_ledger.h"

namespace fedpers {
namespace {

namespace fs = std::filesystem;

template <typename T>
std::vector<T> AxisOr(const std::vector<T>& axis, T fallback) {
  return axis.empty() ? std::vector<T>{fallback} : axis;
}

std::string EpsText(double eps) { return std::isfinite(eps) ? absl::StrFormat("%.3g", eps) : "inf"; }
std::string EpsText(std::optional<double> eps) { return eps ? EpsText(*eps) : "-"; }

// A point's figures as sweep.json lists them (the Pareto mark is the
// sweep's, not the point's, and is added by SweepJson).
nlohmann::ordered_json PointJson(const SweepPoint& p) {
  return {
      {"global_rank", p.global_rank},
      {"residual_rank", p.residual_rank},
      {"ring_bits", p.ring_bits},
      {"noise_multiplier", p.noise_multiplier},
      {"target_epsilon", p.target_epsilon},
      {"clients_per_round", p.clients_per_round},
      {"accuracy", p.accuracy},
      {"loss", p.loss},
      {"epsilon", nlohmann::ordered_json(EpsilonToJson(p.epsilon))},
      {"epsilon_against_coordinator", nlohmann::ordered_json(EpsilonToJson(p.epsilon_against_coordinator))},
      {"bytes_up_per_client_round", p.bytes_up},
      {"bytes_down_per_client_round", p.bytes_down},
      {"client_seconds_per_round", p.client_seconds},
      {"rounds_committed", p.rounds_committed},
      {"rounds_aborted", p.rounds_aborted},
      {"note", p.note}};
}

absl::StatusOr<SweepPoint> PointFromJson(const nlohmann::json& j) {
  SweepPoint p;
  try {
    p.global_rank = j.at("global_rank").get<int64_t>();
    p.residual_rank = j.at("residual_rank").get<int64_t>();
    p.ring_bits = j.at("ring_bits").get<uint32_t>();
    p.noise_multiplier = j.at("noise_multiplier").get<double>();
    p.target_epsilon = j.at("target_epsilon").get<double>();
    p.clients_per_round = j.at("clients_per_round").get<int64_t>();
    p.accuracy = j.at("accuracy").get<double>();
    p.loss = j.at("loss").get<double>();
    const std::optional<double> epsilon = EpsilonFromJson(j.at("epsilon"));
    if (!epsilon.has_value()) throw std::invalid_argument("the point's epsilon is null");
    p.epsilon = *epsilon;
    p.epsilon_against_coordinator = EpsilonFromJson(j.value("epsilon_against_coordinator", nlohmann::json()));
    p.bytes_up = j.at("bytes_up_per_client_round").get<double>();
    p.bytes_down = j.at("bytes_down_per_client_round").get<double>();
    p.client_seconds = j.at("client_seconds_per_round").get<double>();
    p.rounds_committed = j.at("rounds_committed").get<int64_t>();
    p.rounds_aborted = j.at("rounds_aborted").get<int64_t>();
    p.note = j.at("note").get<std::string>();
  } catch (const std::exception& e) {  // nlohmann's, or EpsilonFromJson's invalid_argument
    return absl::DataLossError(absl::StrCat("bad point record: ", e.what()));
  }
  return p;
}

constexpr const char* kPointRecord = "sweep_point.json";

}  // namespace

void MarkParetoFront(std::vector<SweepPoint>& points) {
  // Costs within kParetoCostTolerance of each other are equal: a ring that
  // rounds a longer vector differently moves epsilon by 0.01%, which must
  // not keep a far less accurate point on the front. The relation stays
  // acyclic (being better needs a margin that no-worse cannot give back).
  constexpr double tol = kParetoCostTolerance;
  auto no_worse_cost = [](double q, double p) { return q <= p * (1 + tol); };
  auto better_cost = [](double q, double p) { return q < p * (1 - tol); };
  for (SweepPoint& p : points) {
    p.pareto = true;
    for (const SweepPoint& q : points) {
      const bool no_worse = q.accuracy >= p.accuracy && no_worse_cost(q.epsilon, p.epsilon) &&
                            no_worse_cost(q.bytes_up, p.bytes_up);
      const bool better =
          q.accuracy > p.accuracy || better_cost(q.epsilon, p.epsilon) || better_cost(q.bytes_up, p.bytes_up);
      if (no_worse && better) {
        p.pareto = false;
        break;
      }
    }
  }
}

std::string SweepRunDirectory(const std::string& experiment_out) {
  fs::path p = fs::path(experiment_out).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // "runs/demo/" -> "runs/demo"
  const std::string name = p.filename().string();
  if (name == ".") return "sweep";  // lexically_normal leaves "." only for the current directory
  if (name.empty() || name == "..") return (p / "sweep").string();
  return p.replace_filename(name + "-sweep").string();
}

absl::StatusOr<std::vector<ExperimentConfig>> SweepPointConfigs(const ExperimentConfig& base,
                                                                const SweepGrid& grid, int64_t eligible) {
  if (!grid.noise_multiplier.empty() && !grid.target_epsilon.empty()) {
    return absl::InvalidArgumentError(
        "a sweep varies the noise multiplier or the target epsilon, not both (the target sets the "
        "multiplier)");
  }
  // (noise multiplier, target epsilon) pairs: a given multiplier drops the
  // config's target.
  std::vector<std::pair<double, double>> noise;
  for (double z : grid.noise_multiplier) noise.emplace_back(z, 0.0);
  for (double target : grid.target_epsilon) {
    if (!(target > 0) || !std::isfinite(target)) {
      return absl::InvalidArgumentError(
          absl::StrCat("a target epsilon must be positive and finite, got ", target));
    }
    noise.emplace_back(base.noise_multiplier, target);
  }
  if (noise.empty()) noise.emplace_back(base.noise_multiplier, base.target_epsilon);
  std::vector<ExperimentConfig> configs;
  for (int64_t gr : AxisOr(grid.global_rank, base.lora.global_rank)) {
    for (int64_t rr : AxisOr(grid.residual_rank, base.lora.residual_rank)) {
      for (uint32_t bits : AxisOr(grid.ring_bits, base.ring_bits)) {
        for (const auto& [z, target] : noise) {
          for (int64_t n : AxisOr(grid.clients_per_round, base.clients_per_round)) {
            ExperimentConfig c = base;
            // A rank keeps the config's scale alpha / r, so that points
            // differ in capacity, not in step size.
            if (gr != base.lora.global_rank) {
              c.lora.global_alpha = base.lora.global_scale() * static_cast<double>(gr);
              c.lora.global_rank = gr;
            }
            if (rr != base.lora.residual_rank) {
              c.lora.residual_alpha = base.lora.residual_scale() * static_cast<double>(rr);
              c.lora.residual_rank = rr;
            }
            c.ring_bits = bits;
            c.noise_multiplier = z;
            c.target_epsilon = target;
            if (!c.Noised()) {
              // Without noise epsilon is infinite: a budget would refuse
              // the point; it runs as the no-privacy reference instead.
              c.epsilon_budget = c.epsilon_budget_against_coordinator =
                  std::numeric_limits<double>::infinity();
            }
            c.clients_per_round = n;
            c.min_clients = 0;
            c.out = (fs::path(base.out) / "points" / absl::StrCat(configs.size())).string();
            absl::Status s = c.Validate();
            if (s.ok()) s = c.ValidateForModel(eligible);
            if (!s.ok()) {
              return absl::InvalidArgumentError(absl::StrCat("sweep point ", configs.size(), ": ", s.message()));
            }
            configs.push_back(std::move(c));
          }
        }
      }
    }
  }
  return configs;
}

absl::StatusOr<SweepResult> RunSweep(const ExperimentConfig& base_in, const SweepGrid& grid, bool progress,
                                     bool reuse_finished) {
  SweepResult result;
  result.base = base_in;
  ExperimentConfig& base = result.base;
  base.methods = {Method::kGlobalResidual};
  base.base = base.EffectiveBase();
  // With "users": 0 and target epsilons, the points' noise (and the checks
  // that depend on it) needs the user count before any point runs.
  int64_t eligible = 0;
  if (base.users == 0 && (base.target_epsilon > 0 || !grid.target_epsilon.empty())) {
    absl::StatusOr<int64_t> counted = CountFederatedUsers(base);
    if (!counted.ok()) return counted.status();
    eligible = *counted;
  }
  absl::StatusOr<std::vector<ExperimentConfig>> planned = SweepPointConfigs(base, grid, eligible);
  if (!planned.ok()) return planned.status();
  const std::vector<ExperimentConfig>& configs = *planned;
  for (size_t i = 0; i < configs.size(); ++i) {
    const ExperimentConfig& c = configs[i];
    const std::string record_path = (fs::path(c.out) / kPointRecord).string();
    const nlohmann::json identity = RecordIdentity(nlohmann::json::parse(ExperimentConfigToJson(c)));
    std::optional<SweepPoint> done;
    if (reuse_finished) {
      absl::StatusOr<nlohmann::json> record = ReadFinishedRecord(record_path, identity);
      absl::StatusOr<SweepPoint> point = record.ok() ? PointFromJson(*record) : record.status();
      if (point.ok()) {
        done = *point;
      } else if (progress && !absl::IsNotFound(point.status())) {
        std::fprintf(stderr, "sweep point %zu: %s; running it again\n", i, std::string(point.status().message()).c_str());
      }
    }
    if (done) {
      if (progress) {
        std::fprintf(stderr, "sweep point %zu/%zu: finished by an earlier run (%s)\n", i + 1, configs.size(),
                     record_path.c_str());
      }
      result.points.push_back(std::move(*done));
      continue;
    }
    if (progress) {
      const std::string noise = c.target_epsilon > 0 ? absl::StrCat("target epsilon ", c.target_epsilon)
                                                     : absl::StrCat("z ", c.noise_multiplier);
      std::fprintf(stderr,
                   "sweep point %zu/%zu: global rank %ld, residual rank %ld, ring bits %s, %s, %ld clients\n",
                   i + 1, configs.size(), static_cast<long>(c.lora.global_rank),
                   static_cast<long>(c.lora.residual_rank), RingBitsName(c.ring_bits).c_str(), noise.c_str(),
                   static_cast<long>(c.clients_per_round));
    }
    ExperimentHooks hooks;
    hooks.progress = progress;
    absl::StatusOr<ExperimentResult> r = RunExperiment(c, hooks);
    if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat("sweep point ", i, ": ", r.status().message()));
    const MethodResult& m = r->methods.front();
    SweepPoint p;
    p.global_rank = c.lora.global_rank;
    p.residual_rank = c.lora.residual_rank;
    p.ring_bits = c.ring_bits;
    p.noise_multiplier = m.noise_multiplier;
    p.target_epsilon = c.target_epsilon;
    p.clients_per_round = c.clients_per_round;
    p.accuracy = m.final_eval.accuracy;
    p.loss = m.final_eval.loss;
    p.epsilon = m.epsilon;  // infinite without noise
    p.epsilon_against_coordinator = m.epsilon_against_coordinator;
    p.bytes_up = m.bytes_up_per_client_round;
    p.bytes_down = m.bytes_down_per_client_round;
    p.client_seconds = m.client_seconds_per_round;
    p.rounds_committed = m.rounds_committed;
    p.rounds_aborted = m.rounds_aborted;
    for (const RoundRecord& rec : r->rounds) {
      if (!rec.committed && !rec.abort_reason.empty()) {
        p.note = rec.abort_reason;
        break;
      }
    }
    if (!r->warnings.empty()) {
      p.note = p.note.empty() ? r->warnings.front() : absl::StrCat(r->warnings.front(), "; first abort: ", p.note);
    }
    if (p.rounds_committed == 0) {  // nothing left any client
      p.epsilon = 0;
      p.epsilon_against_coordinator = 0;
    }
    // The point's own run directory (report, metrics, users), then the
    // record that lets a rerun of the sweep skip it.
    absl::StatusOr<ReportFiles> files = WriteReport(*r, c.out);
    if (!files.ok()) {
      return absl::Status(files.status().code(), absl::StrCat("sweep point ", i, ": ", files.status().message()));
    }
    for (const std::string& w : files->warnings) std::fprintf(stderr, "warning: sweep point %zu: %s\n", i, w.c_str());
    if (absl::Status s = WriteFinishedRecord(record_path, identity, PointJson(p)); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("sweep point ", i, ": ", s.message()));
    }
    result.points.push_back(std::move(p));
  }
  MarkParetoFront(result.points);
  return result;
}

namespace {
// The point's noise multiplier, and the target it was set for.
std::string NoiseText(const SweepPoint& p) {
  return p.target_epsilon > 0 ? absl::StrFormat("%.4g (eps %g)", p.noise_multiplier, p.target_epsilon)
                              : absl::StrFormat("%g", p.noise_multiplier);
}
}  // namespace

nlohmann::ordered_json SweepJson(const SweepResult& r) {
  nlohmann::ordered_json points = nlohmann::ordered_json::array();
  for (const SweepPoint& p : r.points) {
    nlohmann::ordered_json j = PointJson(p);
    j["pareto"] = p.pareto;
    points.push_back(std::move(j));
  }
  return {{"data", r.base.data}, {"rounds", r.base.rounds}, {"points", points}};
}

std::string SweepTable(const SweepResult& r) {
  Table t({"#", "r_g", "r_u", "ring bits", "z", "clients", "accuracy", "epsilon", "eps vs coord",
           "up/client/round", "pareto", "note"});
  for (size_t i = 0; i < r.points.size(); ++i) {
    const SweepPoint& p = r.points[i];
    t.AddRow({absl::StrCat(i), absl::StrCat(p.global_rank), absl::StrCat(p.residual_rank),
              RingBitsName(p.ring_bits), NoiseText(p), absl::StrCat(p.clients_per_round),
              absl::StrFormat("%.4f", p.accuracy), EpsText(p.epsilon), EpsText(p.epsilon_against_coordinator),
              HumanBytes(p.bytes_up), p.pareto ? "*" : "", p.note.substr(0, 60)});
  }
  return t.Render();
}

absl::StatusOr<ReportFiles> WriteSweepReport(const SweepResult& r, const std::string& dir) {
  ReportFiles files;
  auto write = [&](const std::string& name, const std::string& text) -> absl::Status {
    const std::string path = (fs::path(dir) / name).string();
    if (absl::Status s = WriteFileAtomically(path, text); !s.ok()) return s;
    files.written.push_back(path);
    return absl::OkStatus();
  };
  std::string csv =
      "global_rank,residual_rank,ring_bits,noise_multiplier,target_epsilon,clients_per_round,accuracy,loss,"
      "epsilon,"
      "epsilon_against_coordinator,bytes_up_per_client_round,bytes_down_per_client_round,"
      "client_seconds_per_round,pareto\n";
  double max_eps = 0;
  for (const SweepPoint& p : r.points) {
    absl::StrAppend(&csv, p.global_rank, ",", p.residual_rank, ",", p.ring_bits, ",", p.noise_multiplier, ",",
                    p.target_epsilon, ",", p.clients_per_round, ",",
                    absl::StrFormat("%.6f,%.6f", p.accuracy, p.loss), ",", EpsText(p.epsilon), ",",
                    p.epsilon_against_coordinator ? EpsText(*p.epsilon_against_coordinator) : "", ",",
                    p.bytes_up, ",", p.bytes_down, ",", p.client_seconds, ",", p.pareto ? 1 : 0, "\n");
    for (const std::optional<double> eps :
         {std::optional<double>(p.epsilon), p.epsilon_against_coordinator}) {
      if (eps && std::isfinite(*eps)) max_eps = std::max(max_eps, *eps);
    }
  }
  if (absl::Status s = write("sweep.csv", csv); !s.ok()) return s;
  if (absl::Status s = write("sweep.json", SweepJson(r).dump(2) + "\n"); !s.ok()) return s;
  const double inf_x = max_eps > 0 ? 1.25 * max_eps : 1.0;
  // Column 6: epsilon against the coordinator (NaN, which gnuplot skips, when unknown).
  std::string dat = "# epsilon_x accuracy kib_up pareto label epsilon_against_coordinator_x\n";
  for (size_t i = 0; i < r.points.size(); ++i) {
    const SweepPoint& p = r.points[i];
    const std::string vs_coordinator = !p.epsilon_against_coordinator ? "NaN"
                                       : std::isfinite(*p.epsilon_against_coordinator)
                                           ? absl::StrCat(*p.epsilon_against_coordinator)
                                           : absl::StrCat(inf_x);
    absl::StrAppend(&dat, std::isfinite(p.epsilon) ? p.epsilon : inf_x, " ", p.accuracy, " ",
                    p.bytes_up / 1024, " ", p.pareto ? 1 : 0, " \"#", i, "\" ", vs_coordinator, "\n");
  }
  if (absl::Status s = write("plots/sweep.dat", dat); !s.ok()) return s;
  const std::string data = absl::StrCat("'", fs::absolute(fs::path(dir) / "plots" / "sweep.dat").string(), "'");
  const std::string png = (fs::path(dir) / "plots" / "sweep.png").string();
  const std::string svg = (fs::path(dir) / "plots" / "sweep.svg").string();
  const std::string script = absl::StrCat(
      "set terminal pngcairo size 960,600 font 'Sans,11'\nset output '", png, "'\n",
      "set multiplot layout 1,2 title 'Sweep: accuracy against epsilon and bytes (filled: Pareto front)'\n"
      "set grid\nset key top left font ',9'\nset ylabel 'mean held-out accuracy'\n",
      "set xlabel 'epsilon (right edge: no noise)'\n", "plot ", data,
      " using 1:($4==1?$2:1/0) with points pt 7 ps 1.6 title 'Pareto front', ", data,
      " using 1:($4==0?$2:1/0) with points pt 6 ps 1.4 title 'other points', ", data,
      " using 6:2 with points pt 2 ps 1.2 title 'epsilon against the coordinator', ", data,
      " using 1:2:5 with labels offset 0,1 font ',9' notitle\n",
      "unset key\nset xlabel 'KiB sent per client per round'\n", "plot ", data,
      " using 3:($4==1?$2:1/0) with points pt 7 ps 1.6, ", data,
      " using 3:($4==0?$2:1/0) with points pt 6 ps 1.4, ", data,
      " using 3:2:5 with labels offset 0,1 font ',9'\n", "unset multiplot\n",
      "set terminal svg size 960,600 font 'Sans,11' background '#ffffff'\nset output '", svg, "'\nreplot\n");
  const std::string script_path = (fs::path(dir) / "plots" / "sweep.gp").string();
  if (absl::Status s = WriteFileAtomically(script_path, script); !s.ok()) return s;
  files.written.push_back(script_path);
  if (absl::Status s = RunGnuplot(script_path); s.ok()) {
    files.written.push_back(png);
    files.written.push_back(svg);
    files.plots.push_back(png);
  } else {
    files.warnings.push_back(std::string(s.message()));
  }
  std::string md =
      absl::StrCat("# fedpers sweep: ", r.base.data, "\n\nglobal+residual, ", r.base.rounds,
                   " rounds per point; `*` marks the Pareto front (accuracy up, epsilon down, bytes "
                   "up down; epsilons or bytes within 1% count as equal). \"eps vs coord\" is the epsilon "
                   "against the coordinator itself, which knows who was sampled (docs/privacy.md); the "
                   "front uses the ledger's epsilon. Per-point runs are in `points/<#>/`.\n\n| # | r_g | r_u "
                   "| ring bits | z | "
                   "clients | accuracy | epsilon | eps vs coord | up / client / round | Pareto | note |\n"
                   "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < r.points.size(); ++i) {
    const SweepPoint& p = r.points[i];
    absl::StrAppend(&md, "| ", i, " | ", p.global_rank, " | ", p.residual_rank, " | ",
                    RingBitsName(p.ring_bits), " | ", NoiseText(p), " | ", p.clients_per_round, " | ",
                    absl::StrFormat("%.4f", p.accuracy), " | ", EpsText(p.epsilon), " | ",
                    EpsText(p.epsilon_against_coordinator), " | ", HumanBytes(p.bytes_up), " | ",
                    p.pareto ? "*" : "", " | ", p.note, " |\n");
  }
  if (!files.plots.empty()) absl::StrAppend(&md, "\n![sweep](plots/sweep.png) ([SVG](plots/sweep.svg))\n");
  for (const std::string& w : files.warnings) absl::StrAppend(&md, "\nNote: ", w, "\n");
  if (absl::Status s = write("sweep.md", md); !s.ok()) return s;
  return files;
}

}  // namespace fedpers
