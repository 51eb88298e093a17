#include "core/file_limit.h"

#include <doctest/doctest.h>

namespace workerpool {
namespace {

TEST_CASE("file_limit: PoolChildren counts processes or autoscale max") {
  PoolConfig pool;
  GroupConfig fixed;
  fixed.processes = 3;
  GroupConfig scaled;
  scaled.processes = 2;
  scaled.autoscale = AutoscaleConfig{1, 50};
  GroupConfig empty;
  empty.processes = 0;
  pool.groups = {fixed, scaled, empty};
  CHECK(PoolChildren(pool) == 53);
}

TEST_CASE("file_limit: children allowed by a limit") {
  CHECK(ChildrenAllowed(0) == 0);
  CHECK(ChildrenAllowed(kReservedFds) == 0);
  CHECK(ChildrenAllowed(1024) == (1024 - kReservedFds) / kFdsPerChild);
  CHECK(ChildrenAllowed(20000) < 10000);  // the machine, unraised
}

TEST_CASE("file_limit: plan raises soft to hard, hard only when allowed") {
  const FileLimits current{1024, 20000};
  FileLimits plan = PlanFileLimits(current, 1 << 20, false, 10000);
  CHECK(plan.soft == 20000);
  CHECK(plan.hard == 20000);
  plan = PlanFileLimits(current, 1 << 20, true, 10000);
  CHECK(plan.hard == ComfortableLimit(10000));
  CHECK(plan.soft == plan.hard);
  CHECK(ChildrenAllowed(plan.soft) >= 10000);
  // fs.nr_open bounds the hard limit.
  plan = PlanFileLimits(current, 30000, true, 10000);
  CHECK(plan.hard == 30000);
  // Never lowered.
  plan = PlanFileLimits({65536, 65536}, 1 << 20, true, 10);
  CHECK(plan.soft == 65536);
  CHECK(plan.hard == 65536);
}

TEST_CASE("file_limit: the description says what to raise") {
  CHECK(DescribeFileLimit(1024, 10).find("allows 384 children") !=
        std::string::npos);
  const std::string too_many = DescribeFileLimit(20000, 10000);
  CHECK(too_many.find("too many") != std::string::npos);
  CHECK(too_many.find("LimitNOFILE=") != std::string::npos);
  CHECK(too_many.find("20256") != std::string::npos);
}

}  // namespace
}  // namespace workerpool
