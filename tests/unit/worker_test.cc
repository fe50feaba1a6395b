// A worker's read-block pool: it grows to what the busiest moment needs,
// so steady load allocates nothing, and gives back once a second the
// blocks that stayed unused that whole second, down to the 32 it keeps.
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "worker_probe.h"

namespace {

constexpr int kKept = 32; // BLOCKS_KEPT in src/lib/worker.c

struct Pool : ::testing::Test {
    evs_worker *w = nullptr;

    void SetUp() override {
        w = probe_worker_new();
        ASSERT_NE(nullptr, w);
    }
    void TearDown() override {
        if (w)
            probe_worker_free(w);
    }

    std::vector<void *> take(int n, int large = 0) {
        std::vector<void *> v;
        for (int i = 0; i < n; i++) {
            v.push_back(probe_block_get(w, large));
            EXPECT_NE(nullptr, v.back());
        }
        return v;
    }
    void give(const std::vector<void *> &v, int large = 0) {
        for (void *b : v)
            probe_block_put(w, b, large);
    }
};

}  // namespace

TEST_F(Pool, KeepsEveryBlockABusyMomentNeededAndReusesThem) {
    std::vector<void *> first = take(300);
    give(first);
    EXPECT_EQ(300, probe_blocks_kept(w, 0));

    // The same load again is served from the pool: the same 300 blocks.
    std::vector<void *> again = take(300);
    EXPECT_EQ(std::set<void *>(first.begin(), first.end()),
              std::set<void *>(again.begin(), again.end()));
    EXPECT_EQ(0, probe_blocks_kept(w, 0));
    give(again);
}

TEST_F(Pool, AQuietPoolIsNeverTrimmed) {
    give(take(kKept));
    EXPECT_EQ(kKept, probe_blocks_kept(w, 0));
    EXPECT_FALSE(probe_trim_armed(w));
}

TEST_F(Pool, TrimFreesOnlyBlocksThatStayedUnusedAWholeSecond) {
    give(take(100));
    ASSERT_TRUE(probe_trim_armed(w));

    // The trim was armed when the 33rd block came back, so 67 of the 100
    // were in use during its second: it frees the other 33.
    probe_run_once(w);
    EXPECT_EQ(67, probe_blocks_kept(w, 0));
    ASSERT_TRUE(probe_trim_armed(w));

    // 50 in use during the next second: only 17 stayed unused.
    give(take(50));
    probe_run_once(w);
    EXPECT_EQ(50, probe_blocks_kept(w, 0));

    // A quiet second: back to what an idle worker keeps, and no more ticks.
    probe_run_once(w);
    EXPECT_EQ(kKept, probe_blocks_kept(w, 0));
    EXPECT_FALSE(probe_trim_armed(w));
}

TEST_F(Pool, SmallAndLargeBlocksAreTrimmedApart) {
    std::vector<void *> small = take(40, 0);
    std::vector<void *> large = take(40, 1);
    give(small, 0);
    give(large, 1);
    ASSERT_TRUE(probe_trim_armed(w));

    // Large blocks stay busy through every second; small ones are quiet.
    while (probe_blocks_kept(w, 0) > kKept) {
        give(take(40, 1), 1);
        probe_run_once(w);
    }
    EXPECT_EQ(kKept, probe_blocks_kept(w, 0));
    EXPECT_EQ(40, probe_blocks_kept(w, 1));
}
