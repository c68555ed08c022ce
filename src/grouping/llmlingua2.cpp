// `llmlingua2`: placeholder until the classifier scorer lands.
#include "builtin.h"
#include "sftgo/core/error.h"

namespace sftgo::grouping::detail {

std::unique_ptr<GroupingFunction> make_grouping_llmlingua2(const GroupingOptions& opts, const Tokenizer*) {
  SFTGO_FAIL(ErrorKind::kConfig, "grouping function 'llmlingua2' is not implemented yet");
}

}  // namespace sftgo::grouping::detail
