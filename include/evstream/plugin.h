/**
 * @file evstream/plugin.h
 * Handler plugins: a shared object that exports one descriptor,
 * `evs_plugin_descriptor`, defined with EVS_PLUGIN_DEFINE. evstreamd loads it
 * with dlopen(RTLD_NOW | RTLD_LOCAL) and gives it connections of the
 * listeners that name it.
 *
 * Life cycle, for every listener that uses the plugin (one plugin may serve
 * several listeners with different settings; each is an instance):
 *
 *     init(settings, &state)            main thread, once per instance
 *     worker_start(worker, state)       on each worker thread
 *     client_connected(r, w, state)     stream mode: a task per connection
 *     or protocol callbacks (ctx=state) protocol mode
 *     worker_stop(worker, state)        on each worker thread
 *     fini(state)                       main thread, after the last connection
 *
 * After a reload (SIGHUP) new connections get a new instance; live
 * connections keep theirs until they end, then the old one is finished.
 */
#ifndef EVSTREAM_PLUGIN_H
#define EVSTREAM_PLUGIN_H

#include <evstream/common.h>
#include <evstream/config.h>
#include <evstream/datagram.h>
#include <evstream/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Bumped on any incompatible change of evs_plugin or of the API. */
#define EVS_PLUGIN_ABI_VERSION 1

/** How a plugin serves a connection. */
typedef enum evs_plugin_mode {
    EVS_PLUGIN_STREAM = 1,   /**< client_connected(reader, writer, state) in a task */
    EVS_PLUGIN_PROTOCOL = 2, /**< an evs_protocol; connection_made gets state as ctx */
    /** An evs_datagram_protocol for udp: and unixgram: listeners (ctx =
     *  the instance state): a udp: listener has an endpoint on every
     *  worker, a unixgram: listener one, on the first worker. */
    EVS_PLUGIN_DATAGRAM = 3,
} evs_plugin_mode;

/** The descriptor a plugin exports. Fill it with EVS_PLUGIN_DEFINE. */
typedef struct evs_plugin {
    uint32_t abi_version; /**< EVS_PLUGIN_ABI_VERSION at build time */
    uint32_t size;        /**< sizeof(evs_plugin) at build time */
    const char *name;     /**< short name for logs */
    evs_plugin_mode mode;

    /** Stream mode: the handler, run as a task on the connection's worker. */
    void (*client_connected)(evs_reader *r, evs_writer *w, void *state);
    /** Protocol mode: the callbacks (ctx is the instance state until the
     *  protocol installs its own with evs_transport_set_protocol). */
    const evs_protocol *protocol;

    /** Optional: check @p settings and make the instance's state.
     *  @return 0 or a negative errno (use evs_settings_fail for a message). */
    int (*init)(evs_settings *settings, void **state);
    /** Optional: per-worker set-up, on that worker's thread. @return 0 or a negative errno. */
    int (*worker_start)(evs_worker *worker, void *state);
    /** Optional: per-worker tear-down, on that worker's thread. */
    void (*worker_stop)(evs_worker *worker, void *state);
    /** Optional: free the state. */
    void (*fini)(void *state);

    /** Datagram mode: the callbacks of each worker's endpoint. */
    const evs_datagram_protocol *datagram;
} evs_plugin;

/* In C++ a namespace-scope const has internal linkage: extern "C" gives
 * the descriptor external linkage and its C name. */
#ifdef __cplusplus
#define EVS__PLUGIN_LINKAGE extern "C"
#else
#define EVS__PLUGIN_LINKAGE
#endif

/** Export @p ... (designated initialisers of evs_plugin, in the order of
 *  its fields in C++) as this plugin's descriptor, with the ABI version
 *  and size filled in. */
#define EVS_PLUGIN_DEFINE(...)                                                                \
    EVS__PLUGIN_LINKAGE __attribute__((visibility("default"))) const evs_plugin              \
        evs_plugin_descriptor = {.abi_version = EVS_PLUGIN_ABI_VERSION,                       \
                                 .size = sizeof(evs_plugin), __VA_ARGS__}

/** The exported symbol's name. */
#define EVS_PLUGIN_SYMBOL "evs_plugin_descriptor"

/** A loaded plugin (the shared object and its descriptor). */
typedef struct evs_plugin_handle evs_plugin_handle;

/**
 * Load a plugin with dlopen(RTLD_NOW | RTLD_LOCAL) and check its descriptor
 * (symbol present, ABI version, size, mode and the matching handler).
 * A @p path without a '/' names a file in the current directory, as it
 * does for stat(), not one on dlopen's library search path.
 * @param err receives a message naming the file and the reason on failure.
 * @return 0 or a negative errno (-ENOENT, -ENOEXEC for a bad descriptor...).
 * Thread: any (not a worker: dlopen may block).
 */
EVS_EXTERN int evs_plugin_load(const char *path, evs_plugin_handle **out, char *err,
                               size_t errlen);
/** The descriptor of a loaded plugin. */
EVS_EXTERN const evs_plugin *evs_plugin_get(const evs_plugin_handle *h);
/** The path it was loaded from. */
EVS_EXTERN const char *evs_plugin_path(const evs_plugin_handle *h);
/** dlclose the plugin. No instance of it may be alive. */
EVS_EXTERN void evs_plugin_unload(evs_plugin_handle *h);

#ifdef __cplusplus
}
#endif
#endif
