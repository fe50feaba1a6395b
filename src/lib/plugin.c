/*
 * plugin.c - loading handler plugins.
 *
 * RTLD_NOW finds missing symbols at load time, not at the first
 * connection; RTLD_LOCAL keeps two plugins' symbols from interposing.
 */
#include "internal.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct evs_plugin_handle {
    void *dl;
    const evs_plugin *desc;
    char *path;
};

static int reject(void *dl, char *err, size_t errlen, int code, const char *path, const char *why)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s", path, why);
    if (dl)
        dlclose(dl);
    return code;
}

int evs_plugin_load(const char *path, evs_plugin_handle **out, char *err, size_t errlen)
{
    evs_plugin_handle *h;
    const evs_plugin *d;
    struct stat st;
    void *dl;
    char why[512], here[PATH_MAX];
    const char *file; /* what is opened; messages name @path as given */

    if (!path || !out)
        return -EINVAL;
    /* dlopen() searches the library path for a name without a '/', where
     * stat() looks in the current directory: a plugin found here would be
     * refused, or another file of that name loaded in its place. */
    file = path;
    if (*path && !strchr(path, '/')) {
        if (strlen(path) + 3 > sizeof here) {
            snprintf(why, sizeof why, "cannot load plugin: %s", strerror(ENAMETOOLONG));
            return reject(NULL, err, errlen, -ENAMETOOLONG, path, why);
        }
        snprintf(here, sizeof here, "./%s", path);
        file = here;
    }
    if (stat(file, &st) < 0) {
        int e = errno;
        snprintf(why, sizeof why, "cannot load plugin: %s", strerror(e));
        return reject(NULL, err, errlen, -e, path, why);
    }
    dl = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(why, sizeof why, "cannot load plugin: %s", dlerror());
        return reject(NULL, err, errlen, -ENOEXEC, path, why);
    }
    dlerror();
    d = dlsym(dl, EVS_PLUGIN_SYMBOL);
    if (!d)
        return reject(dl, err, errlen, -ENOEXEC, path,
                      "not an evstream plugin: no '" EVS_PLUGIN_SYMBOL
                      "' symbol (define it with EVS_PLUGIN_DEFINE)");
    if (d->abi_version != EVS_PLUGIN_ABI_VERSION) {
        snprintf(why, sizeof why,
                 "plugin ABI version %u, this evstream expects %u (rebuild the plugin "
                 "against these headers)",
                 d->abi_version, EVS_PLUGIN_ABI_VERSION);
        return reject(dl, err, errlen, -ENOEXEC, path, why);
    }
    if (d->size < sizeof(evs_plugin)) {
        snprintf(why, sizeof why, "plugin descriptor is %u bytes, expected %zu", d->size,
                 sizeof(evs_plugin));
        return reject(dl, err, errlen, -ENOEXEC, path, why);
    }
    if (d->mode == EVS_PLUGIN_STREAM && !d->client_connected)
        return reject(dl, err, errlen, -ENOEXEC, path,
                      "stream-mode plugin without client_connected");
    if (d->mode == EVS_PLUGIN_PROTOCOL && !d->protocol)
        return reject(dl, err, errlen, -ENOEXEC, path, "protocol-mode plugin without protocol");
    if (d->mode == EVS_PLUGIN_DATAGRAM && !d->datagram)
        return reject(dl, err, errlen, -ENOEXEC, path, "datagram-mode plugin without datagram");
    if (d->mode != EVS_PLUGIN_STREAM && d->mode != EVS_PLUGIN_PROTOCOL &&
        d->mode != EVS_PLUGIN_DATAGRAM)
        return reject(dl, err, errlen, -ENOEXEC, path,
                      "plugin mode must be EVS_PLUGIN_STREAM, _PROTOCOL or _DATAGRAM");
    h = calloc(1, sizeof *h);
    if (!h || !(h->path = strdup(path))) {
        free(h);
        return reject(dl, err, errlen, -ENOMEM, path, "out of memory");
    }
    h->dl = dl;
    h->desc = d;
    *out = h;
    return 0;
}

const evs_plugin *evs_plugin_get(const evs_plugin_handle *h)
{
    return h->desc;
}

const char *evs_plugin_path(const evs_plugin_handle *h)
{
    return h->path;
}

void evs_plugin_unload(evs_plugin_handle *h)
{
    if (!h)
        return;
    dlclose(h->dl);
    free(h->path);
    free(h);
}
