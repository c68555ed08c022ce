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
  EXPECT_EQ(format("{}", uint64_t{18446744073709551615ull}), "18446744073709551615");
  EXPECT_EQ(format("{:08.3f}|{:016x}|{:05}", 3.5, 255, -42), "0003.500|00000000000000ff|-0042");
}

// Issue 24: positional indices were ignored, so the groups page read "Grouping function 30, top 356%"
// and ended in a literal "{5}". The same string as src/grouping/cli.cpp's page, shortened.
TEST(Format, PositionalIndicesRepeatAndReorder) {
  EXPECT_EQ(format("<title>{0}</title><h1>{0}, top {1}%</h1><p>{2} examples; {3:.2f}%, {4:.2f}%</p>{5}", "tfidf", 30,
                   size_t{356}, 34.74361, 12.5, "<h2>x</h2>"),
            "<title>tfidf</title><h1>tfidf, top 30%</h1><p>356 examples; 34.74%, 12.50%</p><h2>x</h2>");
  EXPECT_EQ(format("{1}{0}{1}", "a", "b"), "bab");
  EXPECT_EQ(format("{0:>6.1f}|{0:e}", 2.375), "   2.4|2.375000e+00");
}

// Doubles without a type keep printf's %g (six significant digits), as every message always showed.
TEST(Format, DoublesDefaultToGeneralSixDigits) {
  EXPECT_EQ(format("{} {} {} {} {}", 34.74361234, 1e-5, 0.1 + 0.2, 1e6, 2.0), "34.7436 1e-05 0.3 1e+06 2");
  EXPECT_EQ(format("{:>8}|{:.3}|{:<5}|", 2.5, 3.14159, 1.0f), "     2.5|3.14|1    |");
}

// A placeholder fmt cannot render is a programming error: it throws, naming the string, instead of
// printing the placeholder (the old formatter's silent output).
TEST(Format, BadPlaceholdersThrowNamingTheString) {
  for (const char* bad : {"{} {}", "{2}", "{:.2f}", "{0} {}", "{", "x }", "{:q}", "{:d}"}) {
    const bool is_string_arg = std::string_view(bad) == "{:d}";
    try {
      const std::string s = is_string_arg ? format(bad, "text") : format(bad, 7);
      ADD_FAILURE() << bad << " gave '" << s << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInternal) << bad;
      EXPECT_NE(e.message().find(std::string("\"") + bad + "\""), std::string::npos) << e.message();
    }
  }
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
