// Error codes and logging: every code has a name, the log level is checked
// before formatting, and the sink can be replaced.
#include <gtest/gtest.h>

#include <climits>
#include <string>
#include <vector>

#include "helpers.h"

TEST(Errors, EveryCodeHasAName) {
    EXPECT_STREQ("success", evs_strerror(0));
    EXPECT_NE(std::string(evs_strerror(EVS_EINCOMPLETE)).find("incomplete"), std::string::npos);
    EXPECT_NE(std::string(evs_strerror(EVS_ELIMIT)).find("limit"), std::string::npos);
    EXPECT_STREQ(strerror(ECONNRESET), evs_strerror(-ECONNRESET));
    EXPECT_STREQ(strerror(ETIMEDOUT), evs_strerror(-ETIMEDOUT));
    EXPECT_STREQ(strerror(ECANCELED), evs_strerror(-ECANCELED));
    EXPECT_STREQ(strerror(EPIPE), evs_strerror(EPIPE));
    EXPECT_NE(nullptr, evs_strerror(-123456));
    // Static for every code: glibc's strerror text for an unknown one lives
    // in a buffer its next such call frees (ASan saw the first one read
    // after that).
    const char *unknown = evs_strerror(-20003);
    std::string copy = unknown;
    EXPECT_STREQ(evs_strerror(-20004), unknown);
    EXPECT_EQ(copy, unknown);
    EXPECT_STREQ("unknown error", evs_strerror(INT_MIN));
    EXPECT_STREQ("unknown error", evs_strerror(INT_MAX));
    EXPECT_STREQ(PACKAGE_VERSION_FOR_TESTS, evs_version());
}

namespace {
struct Captured {
    std::vector<std::string> lines;
    std::vector<evs_log_level> levels;
};
void capture(evs_log_level level, int worker, const char *msg, void *arg) {
    auto *c = (Captured *)arg;
    c->lines.push_back(msg);
    c->levels.push_back(level);
    (void)worker;
}
}  // namespace

TEST(Logging, LevelIsCheckedAndSinkReplaceable) {
    Captured c;
    evs_log_level saved = evs_log_get_level();
    evs_log_set_handler(capture, &c);
    evs_log_set_level(EVS_LOG_WARN);
    evs_log(EVS_LOG_INFO, "dropped %d", 1);
    evs_log(EVS_LOG_ERROR, "kept %s", "e");
    evs_log(EVS_LOG_WARN, "kept %s", "w");
    ASSERT_EQ(2u, c.lines.size());
    EXPECT_EQ("kept e", c.lines[0]);
    EXPECT_EQ(EVS_LOG_WARN, c.levels[1]);
    evs_log_set_handler(nullptr, nullptr);
    evs_log_set_level(saved);
}

// A message quoting a peer (its abstract socket name, a header it sent)
// must not start a line of its own in a log file.
TEST(Logging, ControlBytesCannotStartALine) {
    Captured c;
    evs_log_level saved = evs_log_get_level();
    evs_log_set_handler(capture, &c);
    evs_log_set_level(EVS_LOG_WARN);
    evs_log(EVS_LOG_WARN, "peer %s", "@a\n2026-01-01 error [main] forged\r\t\x7f\x1b[31m ok");
    evs_log(EVS_LOG_WARN, "%s", std::string(1000, '\n').c_str());
    evs_log_set_handler(nullptr, nullptr);
    evs_log_set_level(saved);
    ASSERT_EQ(2u, c.lines.size());
    EXPECT_EQ("peer @a\\x0a2026-01-01 error [main] forged\\x0d\\x09\\x7f\\x1b[31m ok", c.lines[0]);
    // cut to the message's bound, never inside an escape
    EXPECT_EQ(1020u, c.lines[1].size());
    EXPECT_EQ(0u, c.lines[1].size() % 4);
    EXPECT_EQ("\\x0a", c.lines[1].substr(c.lines[1].size() - 4));
}

// A NULL settings group (evs_settings_from_libconfig may give one) is
// taken by every call, as by the getters.
TEST(Settings, ANullGroupIsAnError) {
    EXPECT_EQ(nullptr, evs_settings_error(nullptr));
    EXPECT_EQ(-EINVAL, evs_settings_fail(nullptr, "bad %d", 1));
    EXPECT_EQ(0u, evs_settings_count(nullptr));
}

TEST(Logging, ParsesLevelNames) {
    evs_log_level l;
    EXPECT_EQ(0, evs_log_level_parse("debug", &l));
    EXPECT_EQ(EVS_LOG_DEBUG, l);
    EXPECT_EQ(0, evs_log_level_parse("WARNING", &l));
    EXPECT_EQ(EVS_LOG_WARN, l);
    EXPECT_EQ(-EINVAL, evs_log_level_parse("loud", &l));
    EXPECT_EQ(-EINVAL, evs_log_level_parse(nullptr, &l));
    EXPECT_STREQ("info", evs_log_level_name(EVS_LOG_INFO));
}
