#include <gtest/gtest.h>

#include "sftgo/core/error.h"
#include "sftgo/core/log.h"
#include "sftgo/core/timer.h"

namespace sftgo {
namespace {

TEST(Error, CarriesKindMessageHintAndSourceLocation) {
  try {
    SFTGO_CHECK_HINT(1 + 1 == 3, ErrorKind::kData, "fix the data", "file.jsonl:", 7, ": bad record");
    FAIL() << "check did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kData);
    EXPECT_EQ(e.message(), "file.jsonl:7: bad record");
    EXPECT_EQ(e.hint(), "fix the data");
    EXPECT_STREQ(e.what(), "file.jsonl:7: bad record (hint: fix the data)");
    EXPECT_NE(e.where().find("test_error.cpp:"), std::string::npos) << e.where();
  }
}

TEST(Error, PassingCheckDoesNotEvaluateMessage) {
  int evaluated = 0;
  auto side_effect = [&] { return ++evaluated; };
  SFTGO_CHECK(true, ErrorKind::kInternal, side_effect());
  EXPECT_EQ(evaluated, 0);
  EXPECT_THROW(SFTGO_FAIL(ErrorKind::kIo, "x"), Error);
}

TEST(Log, ParsesLevelsAndRejectsUnknown) {
  EXPECT_EQ(parse_log_level("debug"), LogLevel::kDebug);
  EXPECT_EQ(parse_log_level("warning"), LogLevel::kWarn);
  EXPECT_THROW(parse_log_level("loud"), Error);
  init_logging(3, 8, LogLevel::kInfo);
  EXPECT_EQ(log_rank(), 3);
  EXPECT_FALSE(is_rank0());
  // Non-zero ranks only report warnings and errors.
  EXPECT_FALSE(log_enabled(LogLevel::kInfo));
  EXPECT_TRUE(log_enabled(LogLevel::kWarn));
  init_logging(0, 1, LogLevel::kInfo);
  EXPECT_TRUE(log_enabled(LogLevel::kInfo));
  EXPECT_FALSE(log_enabled(LogLevel::kDebug));
}

TEST(Format, PlaceholdersSpecsAndBraces) {
  EXPECT_EQ(format("a {} b {}", 1, "x"), "a 1 b x");
  EXPECT_EQ(format("{:.2f}|{:.3e}|{:5}|{:<5}|{:^7}|{:x}", 3.14159, 12345.0, 42, "ab", "mid", 255),
            "3.14|1.234e+04|   42|ab   |  mid  |ff");
  EXPECT_EQ(format("{{}} {} {}", true, std::string("s")), "{} true s");
  EXPECT_EQ(format("{} {}", 1), "1 {}");  // a missing argument never throws
  EXPECT_EQ(format("{}", uint64_t{18446744073709551615ull}), "18446744073709551615");
  EXPECT_EQ(format("{:08.3f}|{:016x}|{:05}", 3.5, 255, -42), "0003.500|00000000000000ff|-0042");
}

TEST(Timer, PhaseTimesAccumulate) {
  PhaseTimes times;
  { ScopedPhase p(times, "a"); }
  { ScopedPhase p(times, "a"); }
  times.add("b", 1.5);
  EXPECT_EQ(times.totals().size(), 2u);
  EXPECT_GE(times.totals().at("a"), 0.0);
  EXPECT_DOUBLE_EQ(times.totals().at("b"), 1.5);
}

}  // namespace
}  // namespace sftgo
