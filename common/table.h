// Plain-text tables for command output.
#ifndef FEDPERS_COMMON_TABLE_H_
#define FEDPERS_COMMON_TABLE_H_

#include <string>
#include <vector>

namespace fedpers {

// Collects rows, then renders them with aligned columns (numbers right-
// aligned). Control characters and invalid UTF-8 in cells are rendered as
// \xNN (EscapeForTerminal), so a cell cannot act on the terminal.
// Not thread-safe.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  // Short rows are padded with empty cells.
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace fedpers

#endif  // FEDPERS_COMMON_TABLE_H_
