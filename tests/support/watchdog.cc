// Per-test watchdog: every test gets EVS_TEST_TIMEOUT seconds (default 120);
// a test still running then is reported by name and the process aborts, so
// a hang fails loudly instead of stalling CI. timeout(1) in LOG_COMPILER is
// the outer layer.
#include <gtest/gtest.h>

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <cstdlib>

namespace {

char current_test[256];

void on_alarm(int) {
    const char head[] = "\nwatchdog: test timed out: ";
    ssize_t rc = write(2, head, sizeof head - 1);
    rc = write(2, current_test, strlen(current_test));
    rc = write(2, "\n", 1);
    (void)rc;
    abort();
}

unsigned timeout_seconds() {
    const char *env = getenv("EVS_TEST_TIMEOUT");
    int v = env ? atoi(env) : 0;
    return v > 0 ? (unsigned)v : 120u;
}

class Watchdog : public ::testing::EmptyTestEventListener {
    void OnTestStart(const ::testing::TestInfo &info) override {
        snprintf(current_test, sizeof current_test, "%s.%s", info.test_suite_name(), info.name());
        signal(SIGALRM, on_alarm);
        alarm(timeout_seconds());
    }
    void OnTestEnd(const ::testing::TestInfo &) override { alarm(0); }
};

// Registered before gtest_main's main() runs the tests.
const bool registered = [] {
    signal(SIGPIPE, SIG_IGN);
    ::testing::UnitTest::GetInstance()->listeners().Append(new Watchdog);
    return true;
}();

}  // namespace
