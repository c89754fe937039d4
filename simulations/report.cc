#include "simulations/report.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "common/atomic_file.h"
#include "common/build_identity.h"
#include "common/table.h"

namespace fedpers {
namespace {

namespace fs = std::filesystem;
using OJson = nlohmann::ordered_json;

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

// File-name form of a method ("global+residual" -> "global-residual").
std::string Slug(Method m) { return absl::StrReplaceAll(MethodName(m), {{"+", "-"}}); }

// gnuplot string literal (single quotes, doubled inside).
std::string GpString(const std::string& s) { return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "''"}}), "'"); }

const MethodResult* Find(const ExperimentResult& r, Method m) {
  for (const MethodResult& x : r.methods) {
    if (x.method == m) return &x;
  }
  return nullptr;
}

// Nothing leaves the user (base, local) or no privacy at all (centralized).
bool SharesNothing(Method m) { return m == Method::kBase || m == Method::kLocal; }

double MeanTrainBytes(const MethodResult& m) {
  double s = 0;
  for (const UserResult& u : m.users) s += static_cast<double>(u.train_bytes);
  return m.users.empty() ? 0 : s / static_cast<double>(m.users.size());
}

// The finite privacy budgets, as a clause of the report's first paragraph.
std::string BudgetText(const ExperimentConfig& c) {
  std::string out;
  if (std::isfinite(c.epsilon_budget)) absl::StrAppend(&out, ", epsilon budget ", c.epsilon_budget);
  if (std::isfinite(c.epsilon_budget_against_coordinator)) {
    absl::StrAppend(&out, ", budget against the coordinator ", c.epsilon_budget_against_coordinator);
  }
  return out;
}

// The noise multiplier, or each federated method's for a target epsilon.
std::string NoiseText(const ExperimentResult& r) {
  if (r.config.target_epsilon == 0) return absl::StrCat("noise multiplier ", r.config.noise_multiplier);
  std::string per_method;
  for (const MethodResult& m : r.methods) {
    if (m.noise_multiplier == 0) continue;
    absl::StrAppend(&per_method, per_method.empty() ? "" : ", ", MethodName(m.method), " ",
                    absl::StrFormat("%.4g", m.noise_multiplier));
  }
  return absl::StrCat("noise multiplier set for epsilon ", r.config.target_epsilon, " after ",
                      r.config.rounds, " rounds (", per_method, ")");
}

std::string EpsilonText(const ExperimentResult& r, const MethodResult& m) {
  if (SharesNothing(m.method)) return "0 (nothing shared)";
  if (m.method == Method::kCentralized) return "inf (raw data pooled)";
  if (!r.config.Noised()) return "inf (no noise)";
  // Without SecAgg+ the coordinator sees each update with one client's
  // share of the noise: epsilon covers the released adapter only.
  return absl::StrFormat(r.config.secure_agg ? "%.3g" : "%.3g (adapter only)", m.epsilon);
}

// What the coordinator, which knows the sample, could learn: no
// amplification by sampling.
std::string EpsilonAgainstCoordinatorText(const ExperimentResult& r, const MethodResult& m) {
  if (SharesNothing(m.method)) return "0";
  if (m.method == Method::kCentralized || !r.config.Noised()) return "inf";
  if (!m.epsilon_against_coordinator.has_value()) return "-";
  if (std::isinf(*m.epsilon_against_coordinator)) return "inf (central noise)";
  return absl::StrFormat("%.3g", *m.epsilon_against_coordinator);
}

std::string ShareBetter(const std::optional<PairedComparison>& c) {
  return c ? absl::StrFormat("%.0f%%", 100 * c->share_better) : std::string("-");
}

// "+0.0123 (0.0021)": the mean per-user gain and its standard error.
std::string GainWithError(const PairedComparison& c) {
  return absl::StrFormat("%+.4f (%.4f)", c.mean_gain, c.standard_error);
}

// Writes the script and its data, runs gnuplot, returns the PNG path.
absl::Status Plot(const std::string& run_dir, const std::string& name, const std::string& body,
                  ReportFiles& files) {
  const std::string script = (fs::path(run_dir) / "plots" / (name + ".gp")).string();
  const std::string png = (fs::path(run_dir) / "plots" / (name + ".png")).string();
  const std::string svg = (fs::path(run_dir) / "plots" / (name + ".svg")).string();
  const std::string text = absl::StrCat(
      "set terminal pngcairo size 960,600 font 'Sans,11'\nset output ", GpString(png), "\n", body,
      "\nset terminal svg size 960,600 font 'Sans,11' background '#ffffff'\nset output ", GpString(svg), "\nreplot\n");
  if (absl::Status s = WriteFileAtomically(script, text); !s.ok()) return s;
  files.written.push_back(script);
  if (absl::Status s = RunGnuplot(script); !s.ok()) return s;
  files.written.push_back(png);
  files.written.push_back(svg);
  files.plots.push_back(png);
  return absl::OkStatus();
}

// A round tick step (1, 2 or 5 times a power of ten) giving about five ticks
// over [0, span].
double NiceTickStep(double span) {
  const double raw = std::max(span, 1e-12) / 5;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / power;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * power;
}

}  // namespace

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", bytes) : absl::StrFormat("%.1f %s", bytes, units[u]);
}

OJson RoundRecordToJson(const RoundRecord& r) {
  OJson j;
  j["method"] = MethodName(r.method);
  j["round"] = r.round;
  j["committed"] = r.committed;
  if (!r.abort_reason.empty()) j["abort_reason"] = r.abort_reason;
  j["sampled"] = r.sampled;
  j["contributors"] = r.contributors;
  if (r.ring_bits > 0) j["ring_bits"] = r.ring_bits;
  j["bytes_up_per_client"] = r.bytes_up_per_client;
  j["bytes_down_per_client"] = r.bytes_down_per_client;
  j["client_seconds"] = r.client_seconds;
  j["training_seconds"] = r.training_seconds;
  j["coordinator_seconds"] = r.coordinator_seconds;
  j["wall_seconds"] = r.wall_seconds;
  j["epsilon"] = EpsilonToJson(r.epsilon);
  j["epsilon_against_coordinator"] = EpsilonToJson(r.epsilon_against_coordinator);
  if (r.eval) {
    j["eval"] = {{"loss", r.eval->loss}, {"perplexity", r.eval->perplexity}, {"accuracy", r.eval->accuracy}};
  }
  return j;
}

OJson MethodResultToJson(const MethodResult& m) {
  OJson j;
  j["method"] = MethodName(m.method);
  j["accuracy"] = m.final_eval.accuracy;
  j["loss"] = m.final_eval.loss;
  j["perplexity"] = m.final_eval.perplexity;
  for (const auto& [name, comparison] : {std::pair{"global", &m.over_global}, std::pair{"base", &m.over_base}}) {
    j[absl::StrCat("improved_over_", name)] = *comparison ? OJson((*comparison)->share_better) : OJson(nullptr);
    j[absl::StrCat("accuracy_gain_over_", name)] =
        *comparison ? OJson({{"mean", (*comparison)->mean_gain}, {"standard_error", (*comparison)->standard_error}})
                    : OJson(nullptr);
  }
  j["bytes_up_per_client_round"] = m.bytes_up_per_client_round;
  j["bytes_down_per_client_round"] = m.bytes_down_per_client_round;
  j["client_seconds_per_round"] = m.client_seconds_per_round;
  j["coordinator_seconds_per_round"] = m.coordinator_seconds_per_round;
  j["noise_multiplier"] = m.noise_multiplier;
  j["epsilon"] = EpsilonToJson(m.epsilon);
  j["epsilon_against_coordinator"] = EpsilonToJson(m.epsilon_against_coordinator);
  j["rounds_committed"] = m.rounds_committed;
  j["rounds_aborted"] = m.rounds_aborted;
  if (!m.stopped.empty()) j["stopped"] = m.stopped;
  j["wall_seconds"] = m.wall_seconds;
  return j;
}

OJson MethodRecordJson(const MethodResult& m, const std::vector<RoundRecord>& rounds) {
  OJson j = MethodResultToJson(m);
  for (const char* key : {"improved_over_global", "improved_over_base", "accuracy_gain_over_global",
                          "accuracy_gain_over_base"}) {
    j.erase(key);
  }
  OJson users = OJson::array();
  for (const UserResult& u : m.users) {
    users.push_back({{"user_id", u.user_id}, {"train_bytes", u.train_bytes}, {"test_bytes", u.test_bytes},
                     {"participations", u.participations}, {"loss", u.loss}, {"perplexity", u.perplexity},
                     {"accuracy", u.accuracy}, {"eval_tokens", u.eval_tokens}});
  }
  j["users"] = std::move(users);
  OJson records = OJson::array();
  for (const RoundRecord& r : rounds) records.push_back(RoundRecordToJson(r));
  j["rounds"] = std::move(records);
  return j;
}

namespace {
// An epsilon that a record must give (a number or "inf").
double KnownEpsilon(const nlohmann::json& j) {
  const std::optional<double> epsilon = EpsilonFromJson(j);
  if (!epsilon.has_value()) throw std::invalid_argument("an epsilon is missing (null)");
  return *epsilon;
}
}  // namespace

absl::Status MethodRecordFromJson(const nlohmann::json& j, MethodResult& m, std::vector<RoundRecord>& rounds) {
  auto method = [](const nlohmann::json& name) -> Method {
    absl::StatusOr<Method> parsed = ParseMethod(name.get<std::string>());
    if (!parsed.ok()) throw std::invalid_argument(std::string(parsed.status().message()));
    return *parsed;
  };
  MethodResult out;
  std::vector<RoundRecord> records;
  try {
    out.method = method(j.at("method"));
    out.final_eval = {j.at("loss").get<double>(), j.at("perplexity").get<double>(), j.at("accuracy").get<double>()};
    out.bytes_up_per_client_round = j.at("bytes_up_per_client_round").get<double>();
    out.bytes_down_per_client_round = j.at("bytes_down_per_client_round").get<double>();
    out.client_seconds_per_round = j.at("client_seconds_per_round").get<double>();
    out.coordinator_seconds_per_round = j.at("coordinator_seconds_per_round").get<double>();
    out.noise_multiplier = j.at("noise_multiplier").get<double>();
    out.epsilon = KnownEpsilon(j.at("epsilon"));
    out.epsilon_against_coordinator =
        EpsilonFromJson(j.value("epsilon_against_coordinator", nlohmann::json()));
    out.rounds_committed = j.at("rounds_committed").get<int64_t>();
    out.rounds_aborted = j.at("rounds_aborted").get<int64_t>();
    out.stopped = j.value("stopped", std::string());
    out.wall_seconds = j.at("wall_seconds").get<double>();
    for (const nlohmann::json& u : j.at("users")) {
      out.users.push_back({u.at("user_id").get<std::string>(), u.at("train_bytes").get<int64_t>(),
                           u.at("test_bytes").get<int64_t>(), u.at("participations").get<int64_t>(),
                           u.at("loss").get<double>(), u.at("perplexity").get<double>(),
                           u.at("accuracy").get<double>(), u.at("eval_tokens").get<int64_t>()});
    }
    for (const nlohmann::json& r : j.at("rounds")) {
      RoundRecord rec;
      rec.method = method(r.at("method"));
      rec.round = r.at("round").get<int64_t>();
      rec.committed = r.at("committed").get<bool>();
      rec.abort_reason = r.value("abort_reason", std::string());
      rec.sampled = r.at("sampled").get<int64_t>();
      rec.contributors = r.at("contributors").get<int64_t>();
      rec.ring_bits = r.value("ring_bits", int64_t{0});
      rec.bytes_up_per_client = r.at("bytes_up_per_client").get<double>();
      rec.bytes_down_per_client = r.at("bytes_down_per_client").get<double>();
      rec.client_seconds = r.at("client_seconds").get<double>();
      rec.training_seconds = r.at("training_seconds").get<double>();
      rec.coordinator_seconds = r.at("coordinator_seconds").get<double>();
      rec.wall_seconds = r.at("wall_seconds").get<double>();
      rec.epsilon = KnownEpsilon(r.at("epsilon"));
      rec.epsilon_against_coordinator =
          EpsilonFromJson(r.value("epsilon_against_coordinator", nlohmann::json()));
      if (r.contains("eval")) {
        const nlohmann::json& e = r.at("eval");
        rec.eval = EvalSummary{e.at("loss").get<double>(), e.at("perplexity").get<double>(),
                               e.at("accuracy").get<double>()};
      }
      if (rec.method != out.method) throw std::invalid_argument("a round record of another method");
      records.push_back(std::move(rec));
    }
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("bad method record: ", e.what()));
  }
  m = std::move(out);
  rounds = std::move(records);
  return absl::OkStatus();
}

OJson ExperimentSummaryJson(const ExperimentResult& r) {
  OJson j;
  j["corpus"] = r.config.data;
  j["corpus_users"] = r.corpus_users;
  j["users"] = r.users.size();
  j["base_model"] = r.base_model;
  j["pretrained_here"] = r.pretrained_here;
  j["global_adapter_values"] = r.global_values;
  j["residual_adapter_values"] = r.residual_values;
  j["rounds"] = r.config.rounds;
  j["clients_per_round"] = r.config.clients_per_round;
  j["schedule"] = TrainingScheduleName(r.config.local.schedule);
  // With a target epsilon each federated method has its own (in "methods").
  j["noise_multiplier"] = r.config.target_epsilon > 0 ? OJson(nullptr) : OJson(r.config.noise_multiplier);
  j["target_epsilon"] = r.config.target_epsilon;
  j["epsilon_budget"] = EpsilonToJson(r.config.epsilon_budget);
  j["epsilon_budget_against_coordinator"] = EpsilonToJson(r.config.epsilon_budget_against_coordinator);
  j["clip_norm"] = r.config.clip_norm;
  j["delta"] = r.config.delta;
  j["wall_seconds"] = r.wall_seconds;
  OJson methods = OJson::array();
  for (const MethodResult& m : r.methods) methods.push_back(MethodResultToJson(m));
  j["methods"] = methods;
  j["warnings"] = r.warnings;
  return j;
}

nlohmann::json RecordIdentity(nlohmann::json inputs) {
  return {{"build", ExecutableDigest()}, {"inputs", std::move(inputs)}};
}

absl::Status WriteFinishedRecord(const std::string& path, const nlohmann::json& identity,
                                 const nlohmann::ordered_json& result) {
  const nlohmann::ordered_json record = {{"identity", identity}, {"result", result}};
  return WriteFileAtomically(path, record.dump(1) + "\n");
}

absl::StatusOr<nlohmann::json> ReadFinishedRecord(const std::string& path, const nlohmann::json& identity) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat("no record '", path, "'"));
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return absl::FailedPreconditionError(text.status().message());
  nlohmann::json record = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded() || !record.is_object() || !record.contains("identity") || !record.contains("result")) {
    return absl::FailedPreconditionError(absl::StrCat("'", path, "' is not a record of finished work"));
  }
  const nlohmann::json& was = record["identity"];
  const std::string build = identity.value("build", "");
  if (build.empty() || !was.is_object() || was.value("build", "") != build) {
    return absl::FailedPreconditionError(absl::StrCat("'", path, "' was made by another build of fedpers"));
  }
  if (was != identity) return absl::FailedPreconditionError(absl::StrCat("'", path, "' was made with other inputs"));
  return std::move(record["result"]);
}

absl::StatusOr<std::unique_ptr<MetricsLog>> MetricsLog::Create(const std::string& path) {
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot write '", path, "'"));
  return std::unique_ptr<MetricsLog>(new MetricsLog(f));
}

MetricsLog::~MetricsLog() { std::fclose(file_); }

void MetricsLog::Append(const RoundRecord& record) {
  const std::string line = RoundRecordToJson(record).dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

absl::Status RunGnuplot(const std::string& script_path) {
  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    return absl::FailedPreconditionError("gnuplot is not installed (sudo apt-get install gnuplot-nox); plots skipped");
  }
  const std::string cmd = absl::StrCat("gnuplot '", absl::StrReplaceAll(script_path, {{"'", "'\\''"}}), "' 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return absl::InternalError("cannot start gnuplot");
  std::string out;
  char buf[512];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  const int status = pclose(p);
  if (status != 0) return absl::InternalError(absl::StrCat("gnuplot failed on ", script_path, ": ", out));
  return absl::OkStatus();
}

std::string ResultsTable(const ExperimentResult& r) {
  Table t({"method", "accuracy", "loss", "ppl", ">global", ">base", "up/client/round", "down/client/round",
           "client s/round", "coord s/round", "epsilon", "eps vs coord"});
  for (const MethodResult& m : r.methods) {
    const bool federated = m.bytes_up_per_client_round > 0;
    t.AddRow({MethodName(m.method), absl::StrFormat("%.4f", m.final_eval.accuracy),
              absl::StrFormat("%.4f", m.final_eval.loss), absl::StrFormat("%.3f", m.final_eval.perplexity),
              ShareBetter(m.over_global), ShareBetter(m.over_base),
              federated ? HumanBytes(m.bytes_up_per_client_round) : "-",
              federated ? HumanBytes(m.bytes_down_per_client_round) : "-",
              m.client_seconds_per_round > 0 ? absl::StrFormat("%.2f", m.client_seconds_per_round) : "-",
              federated ? absl::StrFormat("%.3f", m.coordinator_seconds_per_round) : "-", EpsilonText(r, m),
              EpsilonAgainstCoordinatorText(r, m)});
  }
  std::string out = t.Render();
  // Whether a difference in mean accuracy is more than noise: the paired
  // per-user gains say (the table's means alone do not).
  std::string gains;
  for (const MethodResult& m : r.methods) {
    if (m.over_global && m.method != Method::kGlobal) {
      absl::StrAppend(&gains, absl::StrFormat("  %-16s %s\n", MethodName(m.method), GainWithError(*m.over_global)));
    }
  }
  if (!gains.empty()) {
    absl::StrAppend(&out, "\naccuracy gain over global per user, mean (standard error):\n", gains);
  }
  return out;
}

absl::StatusOr<ReportFiles> WriteReport(const ExperimentResult& r, const std::string& run_dir) {
  ReportFiles files;
  files.warnings = r.warnings;
  for (const MethodResult& m : r.methods) {
    if (!m.stopped.empty()) files.warnings.push_back(absl::StrCat(MethodName(m.method), ": ", m.stopped));
  }
  std::error_code ec;
  fs::create_directories(fs::path(run_dir) / "plots", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create '", run_dir, "/plots': ", ec.message()));
  auto write = [&](const std::string& name, const std::string& text) -> absl::Status {
    const std::string path = (fs::path(run_dir) / name).string();
    if (absl::Status s = WriteFileAtomically(path, text); !s.ok()) return s;
    files.written.push_back(path);
    return absl::OkStatus();
  };
  if (absl::Status s = write("config.json", ExperimentConfigToJson(r.config)); !s.ok()) return s;
  std::string csv = "method,user_id,train_bytes,test_bytes,participations,loss,perplexity,accuracy,eval_tokens\n";
  for (const MethodResult& m : r.methods) {
    for (const UserResult& u : m.users) {
      absl::StrAppend(&csv, MethodName(m.method), ",", CsvField(u.user_id), ",", u.train_bytes, ",", u.test_bytes, ",",
                      u.participations, ",", absl::StrFormat("%.6f,%.6f,%.6f", u.loss, u.perplexity, u.accuracy), ",",
                      u.eval_tokens, "\n");
    }
  }
  if (absl::Status s = write("users.csv", csv); !s.ok()) return s;
  if (absl::Status s = write("summary.json", ExperimentSummaryJson(r).dump(2) + "\n"); !s.ok()) return s;

  // Plot data.
  std::string curves;
  std::vector<std::string> plot_lines;
  int index = 0;
  for (const MethodResult& m : r.methods) {
    absl::StrAppend(&curves, "# ", MethodName(m.method), "\n");
    for (const RoundRecord& rec : r.rounds) {
      if (rec.method == m.method && rec.eval) absl::StrAppend(&curves, rec.round, " ", rec.eval->accuracy, "\n");
    }
    absl::StrAppend(&curves, "\n\n");
    plot_lines.push_back(absl::StrCat("'plots/accuracy.dat' index ", index++, " with linespoints lw 2 pt 7 title ",
                                      GpString(MethodName(m.method))));
  }
  if (absl::Status s = write("plots/accuracy.dat", curves); !s.ok()) return s;
  double max_eps = 0, max_kib = 0;
  for (const MethodResult& m : r.methods) {
    if (!SharesNothing(m.method) && m.method != Method::kCentralized && std::isfinite(m.epsilon)) {
      max_eps = std::max(max_eps, m.epsilon);
    }
    max_kib = std::max(max_kib, m.bytes_up_per_client_round / 1024);
  }
  const double inf_x = max_eps > 0 ? 1.25 * max_eps : 1.0;
  std::string tradeoff = "# method epsilon_x accuracy kib_up epsilon_label bytes_label\n";
  for (const MethodResult& m : r.methods) {
    double eps_x = SharesNothing(m.method) ? 0 : m.epsilon;
    std::string eps_label = MethodName(m.method), bytes_label = MethodName(m.method);
    if (m.method == Method::kCentralized || (!SharesNothing(m.method) && !r.config.Noised())) {
      eps_x = inf_x;
      eps_label += m.method == Method::kCentralized ? " (raw data: no privacy)" : " (no noise)";
    }
    double kib = m.bytes_up_per_client_round / 1024;
    if (m.method == Method::kCentralized) {
      // Raw text sent once, spread over the rounds for comparison.
      kib = MeanTrainBytes(m) / 1024 / static_cast<double>(r.config.rounds);
      bytes_label += " (raw text)";
    }
    absl::StrAppend(&tradeoff, Slug(m.method), " ", eps_x, " ", m.final_eval.accuracy, " ", kib, " \"", eps_label,
                    "\" \"", bytes_label, "\"\n");
  }
  if (absl::Status s = write("plots/tradeoff.dat", tradeoff); !s.ok()) return s;

  // gnuplot resolves data paths from its working directory: make them absolute.
  const std::string dir = fs::absolute(run_dir).string();
  auto data = [&](const std::string& f) { return GpString((fs::path(dir) / "plots" / f).string()); };
  std::string acc_plot = absl::StrCat(
      "set title 'Mean next-token accuracy per round (", r.users.size(), " users, ", r.config.data, ")' noenhanced\n",
      "set xlabel 'round'\nset ylabel 'mean held-out accuracy'\nset key outside right center vertical\nset grid\n"
      "set xrange [0:", r.config.rounds, "]\n", r.config.rounds <= 20 ? "set xtics 1\n" : "", "plot ");
  for (size_t i = 0; i < plot_lines.size(); ++i) {
    absl::StrAppend(&acc_plot, i ? ", \\\n  " : "",
                    absl::StrReplaceAll(plot_lines[i], {{"'plots/accuracy.dat'", data("accuracy.dat")}}));
  }
  for (const ReferenceResult& ref : r.config.references) {
    absl::StrAppend(&acc_plot, ", \\\n  ", ref.accuracy, " with lines dt 3 lw 1.5 title ",
                    GpString(absl::StrCat(ref.name, " (published)")));
  }
  const std::string tradeoff_plot = absl::StrCat(
      "set multiplot layout 1,2 title 'Accuracy against privacy and communication' noenhanced\n"
      "set grid\nunset key\nset ylabel 'mean held-out accuracy'\nset xtics rotate by -30\n"
      "set xlabel 'epsilon (delta ", absl::StrFormat("%g", r.config.delta), "; right edge: no privacy)'\n",
      "set xrange [", -0.3 * inf_x, ":", 1.45 * inf_x, "]\nset xtics 0, ", NiceTickStep(1.45 * inf_x), "\nset offsets 0, 0, graph 0.08, graph 0.05\n",
      "plot ", data("tradeoff.dat"), " using 2:3 with points pt 7 ps 1.6 lc rgb '#1f77b4', '' using 2:3:5 with labels offset 0,1 font ',9' noenhanced\n",
      "set xlabel 'KiB sent per client per round'\nset xrange [", -0.4 * std::max(1.0, max_kib), ":", 1.4 * std::max(1.0, max_kib),
      "]\nset xtics 0, ", NiceTickStep(1.4 * std::max(1.0, max_kib)), "\n",
      "plot ", data("tradeoff.dat"), " using 4:3 with points pt 7 ps 1.6 lc rgb '#1f77b4', '' using 4:3:6 with labels offset 0,1 font ',9' noenhanced\n",
      "unset multiplot\n");
  std::vector<std::pair<std::string, std::string>> plots = {{"accuracy_per_round", acc_plot},
                                                             {"tradeoff", tradeoff_plot}};
  const MethodResult* gr = Find(r, Method::kGlobalResidual);
  const MethodResult* gl = Find(r, Method::kGlobal);
  const MethodResult* lo = Find(r, Method::kLocal);
  if (gr && (gl || lo)) {
    std::string users = "# user_index global local global+residual\n";
    for (size_t i = 0; i < gr->users.size(); ++i) {
      absl::StrAppend(&users, i, " ", gl ? gl->users[i].accuracy : NAN, " ", lo ? lo->users[i].accuracy : NAN, " ",
                      gr->users[i].accuracy, "\n");
    }
    if (absl::Status s = write("plots/users.dat", users); !s.ok()) return s;
    std::string body =
        "set title 'Per-user accuracy: global+residual against one adapter' noenhanced\n"
        "set xlabel 'accuracy with global (or local) only'\nset ylabel 'accuracy with global+residual'\n"
        "set key top left\nset grid\nset size ratio -1\nplot ";
    if (gl) absl::StrAppend(&body, data("users.dat"), " using 2:4 with points pt 7 title 'vs global', ");
    if (lo) absl::StrAppend(&body, data("users.dat"), " using 3:4 with points pt 9 title 'vs local', ");
    absl::StrAppend(&body, "x with lines dt 2 lc 'gray' title 'equal'");
    plots.emplace_back("users", body);
  }
  for (const auto& [name, body] : plots) {
    absl::Status s = Plot(run_dir, name, body, files);
    if (!s.ok()) {
      files.warnings.push_back(std::string(s.message()));
      if (s.code() == absl::StatusCode::kFailedPrecondition) break;  // no gnuplot: no plot will work
    }
  }

  // report.md
  const ExperimentConfig& c = r.config;
  std::string md = absl::StrCat("# fedpers simulation: ", c.data, "\n\n");
  absl::StrAppend(
      &md, r.users.size(), " users (of ", r.corpus_users, " in the corpus, ", c.select, ", at least ",
      c.min_user_bytes, " bytes each), ", c.rounds, " rounds of ", c.clients_per_round,
      " clients; local budget ", c.local.global_steps + c.local.residual_steps, " steps per round (",
      TrainingScheduleName(c.local.schedule), ": ", c.local.global_steps, " global + ",
      c.local.residual_steps, " residual), batch ", c.local.batch_size, ". ",
      c.secure_agg ? "SecAgg+" : "Plain aggregation (no SecAgg+)", " in a ",
      c.ring_bits == 0 ? "ring sized per round" : absl::StrCat(c.ring_bits, "-bit ring"), "; clip ",
      c.clip_norm, ", ", NoiseText(r), ", delta ", c.delta, BudgetText(c), "; server strategy ",
      c.strategy.name, ". Base model `", r.base_model, "`",
      !r.pretrained_here          ? ""
      : c.pretrain.corpus.empty() ? " (pretrained for this run on the users that do not federate)"
                                  : absl::StrCat(" (pretrained for this run on `", c.pretrain.corpus, "`)"),
      ". Global adapter ", r.global_values, " values, residual ", r.residual_values, " values per user.\n\n");
  absl::StrAppend(&md,
                  "## Results\n\n| method | accuracy | loss | perplexity | gain over global (SE) | users "
                  "better than global | "
                  "better than base | up / client / round | down / client / round | client s / round | "
                  "coordinator s / round | epsilon | epsilon against the coordinator |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const MethodResult& m : r.methods) {
    const bool federated = m.bytes_up_per_client_round > 0;
    absl::StrAppend(
        &md, "| ", MethodName(m.method), " | ", absl::StrFormat("%.4f", m.final_eval.accuracy), " | ",
        absl::StrFormat("%.4f", m.final_eval.loss), " | ", absl::StrFormat("%.3f", m.final_eval.perplexity),
        " | ", m.over_global && m.method != Method::kGlobal ? GainWithError(*m.over_global) : "-", " | ",
        ShareBetter(m.over_global), " | ", ShareBetter(m.over_base), " | ",
        federated ? HumanBytes(m.bytes_up_per_client_round) : "-", " | ",
        federated ? HumanBytes(m.bytes_down_per_client_round) : "-", " | ",
        m.client_seconds_per_round > 0 ? absl::StrFormat("%.2f", m.client_seconds_per_round) : "-", " | ",
        federated ? absl::StrFormat("%.3f", m.coordinator_seconds_per_round) : "-", " | ", EpsilonText(r, m),
        " | ", EpsilonAgainstCoordinatorText(r, m), " |\n");
  }
  if (!c.references.empty()) {
    absl::StrAppend(&md, "\nPublished figures beside ours (other models and setups: compare with care):\n\n"
                         "| reference | accuracy | note |\n|---|---|---|\n");
    for (const ReferenceResult& ref : c.references) {
      absl::StrAppend(&md, "| ", ref.name, " | ", absl::StrFormat("%.3f", ref.accuracy), " | ", ref.note, " |\n");
    }
  }
  absl::StrAppend(&md,
                  "\nAccuracy is next-token (byte) top-1 accuracy on each user's held-out latest ",
                  absl::StrFormat("%.0f", 100 * (1 - c.train_fraction)), "% (first ", c.eval_tokens,
                  " tokens), averaged over users; loss is cross-entropy in nats per token. The gain over global is the mean over "
                  "users of each user's accuracy minus its accuracy with `global`, with the standard error of that mean "
                  "(a gain within about two standard errors of 0 is not shown to be one). Bytes are protobuf payloads "
                  "(invitation with the global adapter down; SecAgg+ messages, or the plain input, up), without gRPC/TLS framing. "
                  "`local` and `base` share nothing; `centralized` pools the raw training text (no privacy) and "
                  "trains the global adapter for as many steps as all clients together.\n\n## Plots\n\n");
  for (const std::string& png : files.plots) {
    const std::string rel = fs::relative(png, run_dir).string();
    const std::string stem = fs::path(png).stem().string();
    absl::StrAppend(&md, "![", stem, "](", rel, ") ([SVG](", fs::path(rel).replace_extension(".svg").string(), "))\n\n");
  }
  for (const std::string& w : files.warnings) absl::StrAppend(&md, "Note: ", w, "\n\n");
  absl::StrAppend(&md, "## Files\n\n- `config.json`: the resolved configuration\n- `metrics.jsonl`: one line per "
                       "round and method\n- `users.csv`: final per-user results of every method\n- `summary.json`: "
                       "the table above\n");
  if (!r.corpus_problems.empty()) {
    absl::StrAppend(&md, "\n## Corpus notes\n\n");
    for (size_t i = 0; i < r.corpus_problems.size() && i < 20; ++i) absl::StrAppend(&md, "- ", r.corpus_problems[i], "\n");
    if (r.corpus_problems.size() > 20) absl::StrAppend(&md, "- ... ", r.corpus_problems.size() - 20, " more\n");
  }
  if (absl::Status s = write("report.md", md); !s.ok()) return s;
  return files;
}

}  // namespace fedpers
