// `fedpers data ...`: inspect a corpus before training on it.
#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "common/corpus.h"
#include "common/table.h"
#include "common/utf8.h"
#include "nlohmann/json.hpp"

namespace fedpers::cli {

void RegisterData(CLI::App& app, const GlobalOptions& global) {
  auto* data = app.add_subcommand("data", "Inspect corpora");
  data->require_subcommand(1);
  auto* users = data->add_subcommand("users", "List a corpus's users, largest first, with their train/test split");
  struct Options {
    std::string spec;
    bool json = false, skip_bad = false;
    size_t min_bytes = 1;
    int64_t limit = 20;
    double train_fraction = 0.8;
  };
  auto o = std::make_shared<Options>();
  users->add_option("--data", o->spec, absl::StrCat("Corpus spec: ", kCorpusSpecForms))
      ->required();
  users
      ->add_option(
          "--min-bytes", o->min_bytes,
          "Drop users with less text (simulate selects by its config's min_user_bytes, 8000 unless set)")
      ->capture_default_str()
      ->check(NonNegative());
  users->add_option("--limit", o->limit, "Rows in the table (0: all; --json lists all)")
      ->capture_default_str()
      ->check(NonNegative());
  users->add_flag("--skip-bad", o->skip_bad, "Skip bad records and list them instead of failing");
  users->add_flag("--json", o->json, "Print one JSON object");
  users->callback([o] {
    CorpusOptions copt;
    copt.skip_bad_records = o->skip_bad;
    copt.min_user_bytes = o->min_bytes;
    absl::StatusOr<Corpus> c = LoadCorpus(o->spec, copt);
    if (!c.ok()) Fail(std::string(c.status().message()));
    std::vector<const UserText*> sorted;
    for (const UserText& u : c->users) sorted.push_back(&u);
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const UserText* a, const UserText* b) { return a->text.size() > b->text.size(); });
    if (o->json) {
      nlohmann::json j = {{"spec", c->spec}, {"total_bytes", c->total_bytes()}, {"problems", c->problems}};
      j["users"] = nlohmann::json::array();
      for (const UserText* u : sorted) {
        TextSplit s = SplitTrainTest(u->text, o->train_fraction);
        j["users"].push_back({{"user_id", u->user_id}, {"bytes", u->text.size()},
                              {"train_bytes", s.train.size()}, {"test_bytes", s.test.size()}});
      }
      std::cout << j.dump(2) << "\n";
      return;
    }
    std::cout << absl::StrFormat("%s: %d users, %d bytes\n\n", c->spec, c->users.size(), c->total_bytes());
    Table t({"user", "bytes", "train bytes", "test bytes"});
    int64_t shown = 0;
    for (const UserText* u : sorted) {
      if (o->limit > 0 && shown++ >= o->limit) break;
      TextSplit s = SplitTrainTest(u->text, o->train_fraction);
      t.AddRow({u->user_id, absl::StrFormat("%d", u->text.size()), absl::StrFormat("%d", s.train.size()),
                absl::StrFormat("%d", s.test.size())});
    }
    std::cout << t.Render();
    if (o->limit > 0 && static_cast<int64_t>(sorted.size()) > o->limit) {
      std::cout << absl::StrFormat("... %d more (--limit 0 lists all)\n", sorted.size() - o->limit);
    }
    if (!c->problems.empty()) {
      std::cout << absl::StrFormat("\n%d problems:\n", c->problems.size());
      // Problems quote the corpus (ids, file names).
      for (const std::string& p : c->problems) std::cout << "  " << EscapeForTerminal(p) << "\n";
    }
  });
}

}  // namespace fedpers::cli
