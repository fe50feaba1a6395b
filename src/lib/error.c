/*
 * error.c - names for evstream's return codes.
 */
#include "internal.h"

#include <limits.h>
#include <string.h>

const char *evs_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case EVS_EINCOMPLETE:
        return "incomplete read: end of stream before the expected bytes";
    case EVS_ELIMIT:
        return "limit overrun: separator not found within the limit";
    default:
        break;
    }
    /* The header promises a static string from any thread: strerror's
     * text for an unknown code lives in a per-thread buffer that its next
     * such call frees. */
    if (err == INT_MIN)
        return "unknown error";
    if (err < 0)
        err = -err;
#ifdef HAVE_STRERRORDESC_NP
    {
        const char *s = strerrordesc_np(err);
        return s ? s : "unknown error";
    }
#else
    return err < 134 ? strerror(err) : "unknown error"; /* Linux's codes end at 133 */
#endif
}

const char *evs_version(void)
{
    return PACKAGE_VERSION;
}
