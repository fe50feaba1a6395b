/*
 * chat - a line chat: every line a client sends reaches every other client
 * connected to the listener, whichever worker serves it. It is the pattern
 * for cross-worker broadcast, and for protecting everyone from a client
 * that does not read.
 *
 * Every worker keeps the list of its own clients (touched only by that
 * worker's thread: no lock). A client's task reads lines; for each one it
 * makes an immutable, reference-counted message, delivers it to the other
 * clients of its worker, and posts it with evs_worker_post to every other
 * worker, where a function delivers it to that worker's clients and drops
 * its reference. Delivering is evs_write, which never parks: one client's
 * delivery cannot hold up another's.
 *
 * Slow clients. What a client has not read yet waits in its connection's
 * write buffer (after the kernel's socket buffer is full). That buffer is
 * the client's queue, bounded by max_queue: a message that would take it
 * past the bound is not queued, and the slow_client policy decides what
 * happens to the client:
 *   "drop"        the message is dropped for this client only; when it has
 *                 room again it first gets "* N messages dropped" (default);
 *   "disconnect"  the connection is aborted (the queue thrown away).
 * Either way the sender and the other clients go on at full speed.
 * Notices a client gets about its own lines ("* line too long", a refused
 * or accepted /nick) are not messages: its own task writes them and then
 * drains (waits while its write buffer is past the high watermark), so a
 * client that sends commands without reading the answers stops being read.
 *
 * Commands: "/nick NAME" renames you (letters, digits, '_' and '-', at
 * most 20), "/quit" leaves. A name is one client's at a time: a name
 * another client has, in any case ("Alice" for "alice"), is refused, and so
 * are the guest names ("guest" and digits) that the chat gives out itself;
 * otherwise a client could speak as another. The names taken are a set
 * shared by every worker, under a mutex (a /nick is rare; a line is not,
 * and takes no lock). A line longer than max_line is refused with a
 * notice and skipped. EOF from a client means it left (the chat cannot
 * tell a half-closed listener from a client that went away until a write
 * fails, and would keep the room and the daemon's shutdown waiting).
 *
 * Settings (the listener's settings group):
 *   max_line    = "1k";     longest accepted line (default 1k)
 *   max_queue   = "64k";    bytes waiting for one client (default 64k)
 *   slow_client = "drop";   "drop" or "disconnect" (default "drop")
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented), in two or
 * more terminals:
 *   nc 127.0.0.1 8892
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <evstream.h>

#define MAX_WORKERS 4096 /* the runtime's own maximum */
#define NAME_MAX_LEN 20

typedef struct client {
    struct client *next, *prev;
    uint64_t id;
    evs_writer *w;
    char name[NAME_MAX_LEN + 1];
    uint64_t dropped; /* messages dropped since the last one delivered */
} client;

/* A name taken with /nick, in the set every worker's clients share. */
typedef struct taken_name {
    struct taken_name *next, *prev;
    char name[NAME_MAX_LEN + 1];
} taken_name;

/* One worker's clients. */
typedef struct room {
    client *head;
} room;

typedef struct chat {
    size_t max_line;
    size_t max_queue;
    bool disconnect; /* slow_client = "disconnect" */
    atomic_uint_fast64_t next_id;
    pthread_mutex_t names_lock; /* guards names (any worker renames) */
    taken_name *names;
    /* rooms[i] is created, used and freed on worker i only. */
    room *rooms[MAX_WORKERS];
} chat;

/* A line on its way to every worker; immutable once made. */
typedef struct message {
    atomic_int refs;
    chat *chat;
    uint64_t sender; /* client id, not delivered to */
    size_t len;
    char text[];
} message;

static void message_unref(message *m)
{
    if (atomic_fetch_sub(&m->refs, 1) == 1)
        free(m);
}

/* Queue @m for one client, or apply the slow-client policy. */
static void deliver_one(chat *ch, client *cl, const message *m)
{
    evs_transport *t = evs_writer_transport(cl->w);
    size_t queued;

    if (!t || evs_is_closing(cl->w))
        return; /* going away: its task will notice */
    queued = evs_transport_get_write_buffer_size(t);
    if (queued + m->len > ch->max_queue) {
        if (ch->disconnect) {
            evs_log(EVS_LOG_INFO, "chat: %s does not read, disconnecting it", cl->name);
            evs_transport_abort(t); /* its task's read fails and it leaves */
        } else {
            cl->dropped++;
        }
        return;
    }
    if (cl->dropped) {
        char note[64];
        int n = snprintf(note, sizeof note, "* %llu messages dropped\n",
                         (unsigned long long)cl->dropped);
        cl->dropped = 0;
        evs_write(cl->w, note, (size_t)n);
    }
    evs_write(cl->w, m->text, m->len);
}

static void deliver_here(chat *ch, int worker, const message *m)
{
    room *rm = ch->rooms[worker];

    for (client *cl = rm ? rm->head : NULL; cl; cl = cl->next)
        if (cl->id != m->sender)
            deliver_one(ch, cl, m);
}

/* On another worker: deliver, then drop that worker's reference. */
static void deliver_posted(evs_worker *w, void *arg)
{
    message *m = arg;

    deliver_here(m->chat, evs_worker_id(w), m);
    message_unref(m);
}

/* A message of @len bytes for the caller to fill in, or NULL. */
static message *message_new(chat *ch, uint64_t sender, size_t len)
{
    message *m = malloc(sizeof *m + len);

    if (!m)
        return NULL;
    atomic_init(&m->refs, 1);
    m->chat = ch;
    m->sender = sender;
    m->len = len;
    return m;
}

/* Deliver @m to every other client, and drop the caller's reference. */
static void message_send(message *m)
{
    evs_worker *self = evs_worker_current();
    evs_runtime *rt = evs_worker_runtime(self);
    int me = evs_worker_id(self);
    int n = evs_runtime_worker_count(rt);

    for (int i = 0; i < n; i++) {
        if (i == me)
            continue;
        atomic_fetch_add(&m->refs, 1);
        if (evs_worker_post(evs_runtime_worker(rt, i), deliver_posted, m) < 0)
            message_unref(m); /* that worker is stopping */
    }
    deliver_here(m->chat, me, m);
    message_unref(m);
}

/* Send text (the caller's line, newline included) to every other client. */
static void broadcast(chat *ch, uint64_t sender, const char *text, size_t len)
{
    message *m = message_new(ch, sender, len);

    if (!m)
        return;
    memcpy(m->text, text, len);
    message_send(m);
}

static void broadcastf(chat *ch, uint64_t sender, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void broadcastf(chat *ch, uint64_t sender, const char *fmt, ...)
{
    char text[256];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n > 0)
        broadcast(ch, sender, text, (size_t)n < sizeof text ? (size_t)n : sizeof text - 1);
}

static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* "guest" and digits, in any case: the names the chat gives out. */
static bool guest_name(const char *s, size_t n)
{
    if (n <= 5 || strncasecmp(s, "guest", 5) != 0)
        return false;
    for (size_t i = 5; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Make @name (valid, NUL-terminated) the client's whose entry is *@mine
 * (NULL: it has none yet; then a new one is stored there), unless another
 * client has it. Names are compared without case: "Alice" would pass for
 * "alice". Checked and taken under one lock, so two clients asking for a
 * name at once cannot both get it. @return 0, -EEXIST or -ENOMEM. */
static int claim_name(chat *ch, taken_name **mine, const char *name)
{
    taken_name *e = *mine ? *mine : calloc(1, sizeof *e);

    if (!e)
        return -ENOMEM;
    pthread_mutex_lock(&ch->names_lock);
    for (taken_name *t = ch->names; t; t = t->next) {
        if (t != e && strcasecmp(t->name, name) == 0) {
            pthread_mutex_unlock(&ch->names_lock);
            if (!*mine)
                free(e);
            return -EEXIST;
        }
    }
    snprintf(e->name, sizeof e->name, "%s", name);
    if (!*mine) {
        e->next = ch->names;
        if (ch->names)
            ch->names->prev = e;
        ch->names = e;
        *mine = e;
    }
    pthread_mutex_unlock(&ch->names_lock);
    return 0;
}

/* Give the client's name back (it left); @mine may be NULL. */
static void release_name(chat *ch, taken_name *mine)
{
    if (!mine)
        return;
    pthread_mutex_lock(&ch->names_lock);
    if (mine->prev)
        mine->prev->next = mine->next;
    else
        ch->names = mine->next;
    if (mine->next)
        mine->next->prev = mine->prev;
    pthread_mutex_unlock(&ch->names_lock);
    free(mine);
}

/* Answer the client itself (a notice about its own line). Unlike a
 * message to the others, this may park: draining here stops us reading a
 * client that sends lines without reading our answers, which would
 * otherwise grow its write buffer without bound. @return 0, or < 0 to end
 * the connection. */
static int notify(evs_writer *w, const char *text, size_t len)
{
    int rc = evs_write(w, text, len);
    return rc < 0 ? rc : evs_drain(w);
}

static int say(evs_writer *w, const char *text)
{
    return notify(w, text, strlen(text));
}

/* "/nick NAME" from @cl, whose /nick name (if any) is *@mine: rename it and
 * tell everyone, or tell it why not. @return 0, or < 0 to end the connection. */
static int rename_client(chat *ch, client *cl, taken_name **mine, const char *arg, size_t len)
{
    char old[sizeof cl->name], name[sizeof cl->name], text[128];
    int n, rc;

    if (!valid_name(arg, len))
        return say(cl->w, "* names are 1 to 20 letters, digits, _ or -\n");
    if (guest_name(arg, len))
        return say(cl->w, "* guest names are given by the chat; pick another name\n");
    memcpy(name, arg, len);
    name[len] = '\0';
    rc = claim_name(ch, mine, name);
    if (rc < 0) {
        n = rc == -EEXIST ? snprintf(text, sizeof text, "* %s is taken; pick another name\n", name)
                          : snprintf(text, sizeof text, "* cannot rename now: out of memory\n");
        return notify(cl->w, text, (size_t)n);
    }
    memcpy(old, cl->name, sizeof old);
    memcpy(cl->name, name, sizeof cl->name);
    broadcastf(ch, cl->id, "* %s is now %s\n", old, cl->name);
    n = snprintf(text, sizeof text, "* you are now %s\n", cl->name);
    return notify(cl->w, text, (size_t)n);
}

/* A carriage return inside a line would let its sender write over the
 * "name: " in front of it on the others' terminals, and speak as someone
 * else; escape sequences could do worse. Control bytes other than tab
 * reach the room as '?'. */
static void hide_controls(char *text, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            text[i] = '?';
    }
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    chat *ch = state;
    room *rm = ch->rooms[evs_worker_id(evs_worker_current())];
    client cl = {.w = w};
    taken_name *mine = NULL; /* the name this client took with /nick */
    char text[2048];

    cl.id = atomic_fetch_add(&ch->next_id, 1) + 1;
    snprintf(cl.name, sizeof cl.name, "guest%llu", (unsigned long long)cl.id);
    /* The client is on this worker's list for as long as the task runs:
     * the list and the client are only touched on this thread. */
    cl.next = rm->head;
    if (rm->head)
        rm->head->prev = &cl;
    rm->head = &cl;

    int n = snprintf(text, sizeof text, "* welcome %s; /nick NAME to rename, /quit to leave\n",
                     cl.name);
    evs_write(w, text, (size_t)n);
    broadcastf(ch, cl.id, "* %s joined\n", cl.name);

    evs_reader_set_limit(r, ch->max_line);
    for (;;) {
        const void *view;
        ssize_t len = evs_readline(r, &view);
        const char *line = view;

        if (len == EVS_ELIMIT) {
            if (say(w, "* line too long\n") < 0 || evs_skipuntil(r, "\n", 1) < 0)
                break;
            continue;
        }
        if (len <= 0)
            break; /* EOF (the client left) or the connection is gone */
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (len == 0)
            continue;
        if (len == 5 && memcmp(line, "/quit", 5) == 0)
            break;
        if (len > 6 && memcmp(line, "/nick ", 6) == 0) {
            if (rename_client(ch, &cl, &mine, line + 6, (size_t)len - 6) < 0)
                break;
            continue;
        }
        /* "name: line\n", sized for the line: max_line may be up to 1M, so
         * a fixed buffer would cut long lines (and their newline) off. */
        size_t nlen = strlen(cl.name);
        message *m = message_new(ch, cl.id, nlen + 2 + (size_t)len + 1);
        if (m) {
            memcpy(m->text, cl.name, nlen);
            memcpy(m->text + nlen, ": ", 2);
            memcpy(m->text + nlen + 2, line, (size_t)len);
            hide_controls(m->text + nlen + 2, (size_t)len);
            m->text[m->len - 1] = '\n';
            message_send(m);
        }
    }

    if (cl.prev)
        cl.prev->next = cl.next;
    else
        rm->head = cl.next;
    if (cl.next)
        cl.next->prev = cl.prev;
    /* The name is free before anyone hears that its holder left: a client
     * that answers "left" with a /nick must get it. */
    release_name(ch, mine);
    broadcastf(ch, cl.id, "* %s left\n", cl.name);
}

/* --- life cycle ----------------------------------------------------------------- */

static int init(evs_settings *s, void **state)
{
    uint64_t max_line = 1024, max_queue = 64 * 1024;
    const char *policy = "drop";
    chat *ch;
    int rc;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "max_line") != 0 && strcmp(key, "max_queue") != 0 &&
            strcmp(key, "slow_client") != 0)
            return evs_settings_fail(s, "unknown setting '%s' (expected max_line, max_queue, "
                                        "slow_client)", key);
    }
    if ((rc = evs_settings_get_size(s, "max_line", &max_line)) < 0 && rc != -ENOENT)
        return rc;
    if ((rc = evs_settings_get_size(s, "max_queue", &max_queue)) < 0 && rc != -ENOENT)
        return rc;
    if ((rc = evs_settings_get_string(s, "slow_client", &policy)) < 0 && rc != -ENOENT)
        return rc;
    if (max_line < 16 || max_line > 1024 * 1024)
        return evs_settings_fail(s, "max_line must be between 16 and 1M");
    /* A message is at most a name and a line: the queue must hold one. */
    if (max_queue < max_line + 64)
        return evs_settings_fail(s, "max_queue must be at least max_line + 64");
    if (strcmp(policy, "drop") != 0 && strcmp(policy, "disconnect") != 0)
        return evs_settings_fail(s, "slow_client must be \"drop\" or \"disconnect\"");
    ch = calloc(1, sizeof *ch);
    if (!ch)
        return -ENOMEM;
    ch->max_line = (size_t)max_line;
    ch->max_queue = (size_t)max_queue;
    ch->disconnect = strcmp(policy, "disconnect") == 0;
    pthread_mutex_init(&ch->names_lock, NULL);
    *state = ch;
    return 0;
}

static int worker_start(evs_worker *w, void *state)
{
    chat *ch = state;
    int id = evs_worker_id(w);

    if (id < 0 || id >= MAX_WORKERS)
        return -EINVAL;
    ch->rooms[id] = calloc(1, sizeof(room));
    return ch->rooms[id] ? 0 : -ENOMEM;
}

static void worker_stop(evs_worker *w, void *state)
{
    chat *ch = state;
    int id = evs_worker_id(w);

    free(ch->rooms[id]); /* empty: every client's task has ended */
    ch->rooms[id] = NULL;
}

static void fini(void *state)
{
    chat *ch = state;

    pthread_mutex_destroy(&ch->names_lock); /* the set is empty: every client left */
    free(ch);
}

EVS_PLUGIN_DEFINE(.name = "chat", .mode = EVS_PLUGIN_STREAM, .client_connected = client_connected,
                  .init = init, .fini = fini, .worker_start = worker_start,
                  .worker_stop = worker_stop);
