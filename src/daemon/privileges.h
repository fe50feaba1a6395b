/*
 * privileges.h - what evstreamd checks and changes about its process:
 * root, user/group, umask, the fd limit and vm.max_map_count.
 */
#ifndef EVSD_PRIVILEGES_H
#define EVSD_PRIVILEGES_H

#include <stdio.h>
#include <sys/types.h>

#include "config.h"

/* The configured umask, before any file is created (the log first). */
void evsd_apply_umask(const evsd_config *cfg);
/* Before binding: refuse root without user or allow_root, raise
 * RLIMIT_NOFILE to what max_connections needs, warn about
 * vm.max_map_count. @return 0 or -1 (logged). */
int evsd_prepare_process(const evsd_config *cfg);
/* What evsd_prepare_process would refuse, with the same code (`evstreamd
 * -t`): root without user or allow_root, a file descriptor limit that
 * cannot reach what max_connections needs. Judged for the user and limits
 * this process runs with. @return 0, or -1 after printing every problem,
 * one per line, to @errors. */
int evsd_check_process(const evsd_config *cfg, FILE *errors);
/* The uid evsd_drop_privileges will switch to: `user`'s when started as
 * root, else (uid_t)-1. */
uid_t evsd_switch_uid(const evsd_config *cfg);
/* After binding: switch to the configured user and group, giving it the
 * log files first, which reloads and SIGUSR1 reopen. @return 0 or -1. */
int evsd_drop_privileges(const evsd_config *cfg);

#endif
