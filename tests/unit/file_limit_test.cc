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

TEST_CASE("file_limit: a pidfd per child when the limit has room for it") {
  // A pipe each: 2 per child, then 1 pidfd each.
  CHECK(PidfdsAllowed(20000, 2000, 1) == 2000);
  CHECK(PidfdsAllowed(1024, 200, 1) == 200);
  // 1024 - 256 = 768: 256 children with a pipe each leave 256 pidfds.
  CHECK(PidfdsAllowed(1024, 256, 1) == 256);
  CHECK(PidfdsAllowed(1024, 300, 1) == 1024 - kReservedFds - 600);
  CHECK(PidfdsAllowed(1024, 384, 1) == 0);  // a pipe each, nothing left
  // The machine: 10,000 children share an output socket (1 each, 2
  // for the group); 9,742 of them get a pidfd.
  CHECK(PidfdsAllowed(20000, 10000, 1) == 20000 - kReservedFds - 2 - 10000);
  // The output mode comes first (a pipe each while they fit): pidfds get
  // what is left.
  CHECK(PidfdsAllowed(20000, 9000, 1) == 20000 - kReservedFds - 18000);
  CHECK(PidfdsAllowed(800, 400, 1) == 800 - kReservedFds - 2 - 400);
  // Never more than the children; none when the pool does not fit.
  CHECK(PidfdsAllowed(1 << 20, 10, 1) == 10);
  CHECK(PidfdsAllowed(20000, 30000, 1) == 0);
  CHECK(PidfdsAllowed(0, 0, 0) == 0);
}

TEST_CASE("file_limit: the comfortable limit counts pidfds before held ends") {
  CHECK(ComfortableLimit(10000) ==
        kReservedFds +
            10000 * (kFdsPerChild + kPidfdsPerChild + kHeldFdsPerChild));
  // Where the Watcher holds every child's ends, every child has a pidfd.
  for (std::uint64_t children : {1u, 100u, 2000u, 10000u}) {
    CHECK(PidfdsAllowed(ComfortableLimit(children), children, 1) == children);
  }
}

TEST_CASE("file_limit: the reaping line says which way and what to raise") {
  CHECK(DescribeReaping(20000, 2000, 1, true) ==
        "children reaped by pidfd, one each");
  CHECK(DescribeReaping(20000, 2000, 1, false) ==
        "children reaped on SIGCHLD by waitpid (WORKERPOOL_REAP=waitpid)");
  const std::string partial = DescribeReaping(20000, 10000, 1, true);
  CHECK(partial.rfind("9742 of 10000 children reaped by pidfd, the rest on "
                      "SIGCHLD by waitpid",
                      0) == 0);
  // Shared output (10,000 + 2 + reserve) plus a pidfd each.
  CHECK(partial.find("at least 20258 for a pidfd each") != std::string::npos);
  const std::string none = DescribeReaping(1024, 384, 1, true);
  CHECK(none.rfind("0 of 384 children", 0) == 0);
  CHECK(none.find("at least 1408") != std::string::npos);  // 256 + 3 x 384
}

}  // namespace
}  // namespace workerpool
