/*
 * admin.h - the optional admin listener: GET /metrics (Prometheus text)
 * and GET /status (JSON).
 */
#ifndef EVSD_ADMIN_H
#define EVSD_ADMIN_H

#include "config.h"
#include "service.h"

/* Start serving @conf on the service's runtime. @return 0 or -1 (logged). */
int evsd_admin_start(evsd_service *svc, const evsd_listener_conf *conf);

#endif
