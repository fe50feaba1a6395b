/*
 * service.h - what evstreamd serves: plugins, their instances and the
 * listeners of the current configuration, and reloads between
 * configurations.
 */
#ifndef EVSD_SERVICE_H
#define EVSD_SERVICE_H

#include <stdio.h>

#include "config.h"

typedef struct evsd_service evsd_service;

/*
 * What evsd_service_start and evsd_service_reload do for each listener of
 * @cfg before binding, with the same code (`evstreamd -t`): load its plugin
 * and check that its mode fits the address, init an instance (then fini
 * it), build its TLS context and try its access log file (leaving no new
 * file behind). Binds nothing, starts no worker.
 * @return 0, or -1 after printing every problem, one per line, to @errors.
 */
int evsd_service_check(const evsd_config *cfg, FILE *errors);

/* Bind @cfg's listeners (@cfg taken over) on a new runtime with @workers
 * (0: from the config), accepting nothing yet. @return the service or
 * NULL after logging why. */
evsd_service *evsd_service_start(evsd_config *cfg, int workers);

/* Start serving what evsd_service_start bound: called once the process
 * runs as `user`, so no connection is ever handled with the starting
 * user's rights. */
void evsd_service_serve(evsd_service *svc);

/* Replace the configuration: new connections get @cfg, live ones keep
 * their plugin instance; unchanged listeners keep their socket. On any
 * error the old configuration keeps serving and @cfg is freed.
 * @return 0 or -1. */
int evsd_service_reload(evsd_service *svc, evsd_config *cfg);

/* Finish instances whose last connection has ended (after reloads). */
void evsd_service_reap(evsd_service *svc);

/* Write the listeners' addresses to @f: "name address" lines, or a
 * sentence each for people when @human. */
void evsd_service_print_addresses(evsd_service *svc, FILE *f, bool human);

/* Stop accepting, let connections finish within the shutdown timeout,
 * abort the rest, and free everything. @return 0. */
int evsd_service_stop(evsd_service *svc);

/* Prometheus text (/metrics) and JSON (/status) of the running service.
 * Any thread. */
void evsd_service_metrics(evsd_service *svc, FILE *f);
void evsd_service_status(evsd_service *svc, FILE *f);
evs_runtime *evsd_service_runtime(evsd_service *svc);
/* Record the admin listener (listed as "admin ADDRESS"), started with the
 * others by evsd_service_serve. */
void evsd_service_set_admin(evsd_service *svc, const char *address, evs_server *server);

/* The log settings of the current configuration. */
const evsd_config *evsd_service_config(const evsd_service *svc);
/* The configuration it started with: what the settings a reload cannot
 * change are running with. */
const evsd_config *evsd_service_boot_config(const evsd_service *svc);

#endif
