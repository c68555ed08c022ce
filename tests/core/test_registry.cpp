#include <gtest/gtest.h>

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

#include "sftgo/core/error.h"
#include "sftgo/core/registry.h"

namespace sftgo {
namespace {

using IntFactory = std::function<int()>;

RegistryWords toy_words() {
  return {"a toy needs a name and a factory", "toy", "toy.name: unknown toy", "set toy.name to a registered toy"};
}

// The sftgo::Error that f throws, or none.
std::optional<Error> error_of(const std::function<void()>& f) {
  try {
    f();
    return std::nullopt;
  } catch (const Error& e) { return e; }
}

TEST(NamedRegistry, AddFindGetAndSortedNames) {
  NamedRegistry<IntFactory> r(toy_words());
  r.add("zeta", [] { return 26; });
  r.add("alpha", [] { return 1; });
  EXPECT_EQ(r.names(), (std::vector<std::string>{"alpha", "zeta"}));
  ASSERT_TRUE(r.find("zeta").has_value());
  EXPECT_EQ((*r.find("zeta"))(), 26);
  EXPECT_FALSE(r.find("beta").has_value());
  EXPECT_EQ(r.get("alpha")(), 1);
  EXPECT_NO_THROW(r.check("alpha"));
}

TEST(NamedRegistry, RefusesEmptyNameUnsetEntryAndDuplicate) {
  NamedRegistry<IntFactory> r(toy_words());
  r.add("one", [] { return 1; });
  for (auto bad : {std::function<void()>([&] { r.add("", [] { return 0; }); }),
                   std::function<void()>([&] { r.add("unset", IntFactory{}); })}) {
    const auto e = error_of(bad);
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->kind(), ErrorKind::kInternal);
    EXPECT_EQ(e->message(), "a toy needs a name and a factory");
  }
  const auto dup = error_of([&] { r.add("one", [] { return 2; }); });
  ASSERT_TRUE(dup.has_value());
  EXPECT_EQ(dup->kind(), ErrorKind::kInternal);
  EXPECT_EQ(dup->message(), "toy 'one' is already registered");
  EXPECT_EQ(r.get("one")(), 1);  // the first entry stays
  EXPECT_EQ(r.names(), (std::vector<std::string>{"one"}));
}

TEST(NamedRegistry, UnknownNameNamesTheKeyTheRegisteredAndTheClosest) {
  NamedRegistry<IntFactory> r(toy_words());
  r.add("tfidf", [] { return 1; });
  r.add("rho1", [] { return 2; });
  const auto near = error_of([&] { r.get("tf-idf"); });
  ASSERT_TRUE(near.has_value());
  EXPECT_EQ(near->kind(), ErrorKind::kConfig);
  EXPECT_EQ(near->message(), "toy.name: unknown toy 'tf-idf'; registered: rho1, tfidf");
  EXPECT_EQ(near->hint(), "did you mean 'tfidf'?");
  const auto far = error_of([&] { r.check("completely_unrelated"); });
  ASSERT_TRUE(far.has_value());
  EXPECT_EQ(far->kind(), ErrorKind::kConfig);
  EXPECT_EQ(far->message(), "toy.name: unknown toy 'completely_unrelated'; registered: rho1, tfidf");
  EXPECT_EQ(far->hint(), "set toy.name to a registered toy");
}

// A custom completeness check (an entry that does not test as bool) and an on_accept that throws:
// the entry is then not added.
TEST(NamedRegistry, CustomCheckAndThrowingOnAcceptAddsNothing) {
  struct Spec {
    std::string label;
    IntFactory make;
  };
  NamedRegistry<Spec> r(toy_words(), [](const Spec& s) { return static_cast<bool>(s.make); });
  const auto unset = error_of([&] { r.add("x", Spec{"x", {}}); });
  ASSERT_TRUE(unset.has_value());
  EXPECT_EQ(unset->message(), "a toy needs a name and a factory");
  const auto refuse = [](const Spec&) { throw std::runtime_error("options clash"); };
  EXPECT_THROW(r.add("x", Spec{"x", [] { return 3; }}, refuse), std::runtime_error);
  EXPECT_TRUE(r.names().empty());
  int accepted = 0;
  r.add("x", Spec{"x", [] { return 3; }}, [&](const Spec& s) { accepted += s.make(); });
  EXPECT_EQ(accepted, 3);
  EXPECT_EQ(r.get("x").label, "x");
}

}  // namespace
}  // namespace sftgo
