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
  // Too many even with one output socket per group: 1 per child, 2 per
  // group and the reserve.
  const std::string too_many = DescribeFileLimit(20000, 30000, 2);
  CHECK(too_many.find("too many") != std::string::npos);
  CHECK(too_many.find("LimitNOFILE=") != std::string::npos);
  CHECK(too_many.find("30260") != std::string::npos);
}

TEST_CASE("file_limit: a pool that fits with a pipe each keeps its pipes") {
  CHECK(ChooseOutputMode(20000, 9872, 1) == OutputMode::kPipePerChild);
  CHECK(ChooseOutputMode(1024, 10, 3) == OutputMode::kPipePerChild);
  CHECK(ChooseOutputMode(1024, 384, 1) == OutputMode::kPipePerChild);
}

TEST_CASE(
    "file_limit: a pool too large for a pipe each shares a socket per "
    "group") {
  // The machine: 10,000 children in 20,000 descriptors.
  CHECK(ChooseOutputMode(20000, 10000, 1) == OutputMode::kSocketPerGroup);
  CHECK(ChooseOutputMode(20000, 10000, 40) == OutputMode::kSocketPerGroup);
  CHECK(ChooseOutputMode(1024, 385, 1) == OutputMode::kSocketPerGroup);
  // 1 per child + 2 per group + the reserve.
  CHECK(ChildrenAllowedSharedOutput(20000, 1) == 20000 - kReservedFds - 2);
  CHECK(ChildrenAllowedSharedOutput(20000, 10) == 20000 - kReservedFds - 20);
  CHECK(ChildrenAllowedSharedOutput(kReservedFds + 2, 1) == 0);
  CHECK(ChildrenAllowedSharedOutput(0, 0) == 0);
  CHECK(FitsFileLimit(20000, 10000, 1));
  CHECK(FitsFileLimit(20000, 19742, 1));
  CHECK_FALSE(FitsFileLimit(20000, 19743, 1));
  CHECK_FALSE(FitsFileLimit(20000, 19742, 2));
  // Fits neither way: pipes (refused at start by FitsFileLimit).
  CHECK(ChooseOutputMode(20000, 30000, 1) == OutputMode::kPipePerChild);
  CHECK(ChooseOutputMode(800, 400, 1) == OutputMode::kSocketPerGroup);
  CHECK_FALSE(FitsFileLimit(800, 400, 100));
}

TEST_CASE("file_limit: the description names the shared mode") {
  const std::string shared = DescribeFileLimit(20000, 10000, 2);
  CHECK(shared.rfind("output of 10000 children through one socket per group: "
                     "RLIMIT_NOFILE 20000 allows 9872 children",
                     0) == 0);
  CHECK(shared.find("19740 with 1 descriptor per child") != std::string::npos);
  CHECK(shared.find("20256") != std::string::npos);
  CHECK(shared.find("too many") == std::string::npos);
  CHECK(shared.find("(2 groups)") != std::string::npos);
  CHECK(DescribeFileLimit(20000, 10000, 1).find("(1 group)") !=
        std::string::npos);
  CHECK(DescribeFileLimit(1024, 384, 1).find("socket") == std::string::npos);
}

}  // namespace
}  // namespace workerpool
