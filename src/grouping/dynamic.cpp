// The one cast from a grouping function to its dynamic interface (dynamic.h).
#include "sftgo/grouping/dynamic.h"

namespace sftgo::grouping {

DynamicGroupingFunction* as_dynamic(GroupingFunction& fn) {
  return fn.is_static() ? nullptr : dynamic_cast<DynamicGroupingFunction*>(&fn);
}

}  // namespace sftgo::grouping
