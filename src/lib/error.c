/*
 * error.c - names for evstream's return codes.
 */
#include "internal.h"

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
    if (err < 0)
        err = -err;
    /* strerror() may use a static buffer on some libcs but glibc returns
     * static strings for known codes, which is all we pass here. */
    return strerror(err);
}

const char *evs_version(void)
{
    return PACKAGE_VERSION;
}
