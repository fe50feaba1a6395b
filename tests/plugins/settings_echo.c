/*
 * settings_echo - a stream-mode test plugin that reads settings of every
 * type in init and, for each connection, first writes them as one line:
 *
 *   str=<s> int=<i> float=<f> bool=<true|false> size=<n> duration_ms=<n>
 *   list=<a,b,...> count=<number of keys>\n        (all on one line)
 *
 * then echoes whatever the client sends. Absent keys print as "-".
 * A key of the wrong type makes init fail with the getter's message.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <evstream.h>

typedef struct settings_echo {
    char line[2048];
    size_t len;
} settings_echo;

static int init(evs_settings *s, void **state)
{
    settings_echo *se = calloc(1, sizeof *se);
    const char *str = "-";
    int64_t i = 0;
    double f = 0, d = 0;
    bool b = false;
    uint64_t size = 0;
    size_t nlist = 0;
    char list[1024] = "";
    int rc_i, rc_f, rc_b, rc_size, rc_d, rc;
    int n;

    if (!se)
        return -ENOMEM;
    if ((rc = evs_settings_get_string(s, "str", &str)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc_i = rc = evs_settings_get_int(s, "int", &i)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc_f = rc = evs_settings_get_float(s, "float", &f)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc_b = rc = evs_settings_get_bool(s, "bool", &b)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc_size = rc = evs_settings_get_size(s, "size", &size)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc_d = rc = evs_settings_get_duration(s, "duration", &d)) < 0 && rc != -ENOENT)
        goto fail;
    if ((rc = evs_settings_get_list_size(s, "list", &nlist)) < 0 && rc != -ENOENT)
        goto fail;
    for (size_t k = 0; k < nlist; k++) {
        const char *item;
        if ((rc = evs_settings_get_list_string(s, "list", k, &item)) < 0)
            goto fail;
        if (strlen(list) + strlen(item) + 2 < sizeof list) {
            if (k > 0)
                strcat(list, ",");
            strcat(list, item);
        }
    }
    char vi[32] = "-", vf[32] = "-", vsize[32] = "-", vd[32] = "-";
    if (rc_i == 0)
        snprintf(vi, sizeof vi, "%" PRId64, i);
    if (rc_f == 0)
        snprintf(vf, sizeof vf, "%g", f);
    if (rc_size == 0)
        snprintf(vsize, sizeof vsize, "%" PRIu64, size);
    if (rc_d == 0)
        snprintf(vd, sizeof vd, "%.0f", d * 1000.0);
    n = snprintf(se->line, sizeof se->line,
                 "str=%s int=%s float=%s bool=%s size=%s duration_ms=%s list=%s count=%zu\n", str,
                 vi, vf, rc_b == 0 ? (b ? "true" : "false") : "-", vsize, vd, nlist ? list : "-",
                 evs_settings_count(s));
    se->len = n < 0 ? 0 : (size_t)n < sizeof se->line ? (size_t)n : sizeof se->line - 1;
    *state = se;
    return 0;

fail:
    free(se);
    return rc;
}

static void fini(void *state)
{
    free(state);
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    settings_echo *se = state;
    char buf[16384];
    ssize_t n;

    if (evs_write(w, se->line, se->len) < 0 || evs_drain(w) < 0)
        return;
    while ((n = evs_read(r, buf, sizeof buf)) > 0) {
        if (evs_write(w, buf, (size_t)n) < 0 || evs_drain(w) < 0)
            break;
    }
}

EVS_PLUGIN_DEFINE(.name = "settings_echo", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init, .fini = fini);
