/*
 * sendfile_server - sends one configured file to every client, optionally
 * preceded by a one-line header, then closes. It shows evs_sendfile: on a
 * plain TCP connection the kernel copies the file with sendfile(2), on a
 * TLS listener (without kernel TLS) the file is read and written through
 * the TLS layer instead; either way evs_sendfile drains as it goes, so a
 * slow client holds at most about one slice plus the high watermark of
 * memory, whatever the file's size.
 *
 * The file is opened for every connection (a file replaced on disk is seen
 * by the next client) and sent up to the end it has at that moment; if it
 * is no longer a regular file then, the client is closed at once. The
 * client's input is ignored.
 *
 * Settings (the listener's settings group):
 *   file   = "/path/to/file";   required; must be readable when the
 *                               configuration is loaded
 *   header = "FILE v1";         a line sent first, followed by "\n"
 *                               (default: none; no newlines in it)
 *
 * Try it (with the listener in conf/evstreamd.conf uncommented):
 *   nc 127.0.0.1 8896 </dev/null | head
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <evstream.h>

typedef struct sendfile_server {
    char *file;
    char *header; /* with its "\n", or NULL */
} sendfile_server;

/* Open @path if it is a regular file. O_NONBLOCK: opening a FIFO put in
 * its place must not block the worker until a writer comes (it changes
 * nothing for a regular file). @return the fd, or -errno (-EINVAL: not a
 * regular file). */
static int open_regular(const char *path)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -EINVAL;
    }
    return fd;
}

static int init(evs_settings *s, void **state)
{
    const char *file = NULL, *header = NULL;
    sendfile_server *sf;
    int rc, fd;

    for (size_t i = 0; i < evs_settings_count(s); i++) {
        const char *key = evs_settings_key(s, i);
        if (strcmp(key, "file") != 0 && strcmp(key, "header") != 0)
            return evs_settings_fail(s, "unknown setting '%s' (expected file, header)", key);
    }
    rc = evs_settings_get_string(s, "file", &file);
    if (rc == -ENOENT)
        return evs_settings_fail(s, "file = \"/path/to/file\" is required");
    if (rc < 0)
        return rc;
    if ((rc = evs_settings_get_string(s, "header", &header)) < 0 && rc != -ENOENT)
        return rc;
    if (header && strpbrk(header, "\r\n"))
        return evs_settings_fail(s, "header must be one line (no CR or LF in it)");

    /* Refuse the configuration now rather than fail every connection. */
    fd = open_regular(file);
    if (fd == -EINVAL)
        return evs_settings_fail(s, "file '%s' is not a regular file", file);
    if (fd < 0)
        return evs_settings_fail(s, "file '%s' cannot be read: %s", file, strerror(-fd));
    close(fd);

    if (!(sf = calloc(1, sizeof *sf)))
        return -ENOMEM;
    sf->file = strdup(file);
    if (header) {
        size_t len = strlen(header);
        if ((sf->header = malloc(len + 2))) {
            memcpy(sf->header, header, len);
            memcpy(sf->header + len, "\n", 2);
        }
    }
    if (!sf->file || (header && !sf->header)) {
        free(sf->file);
        free(sf->header);
        free(sf);
        return -ENOMEM;
    }
    *state = sf;
    return 0;
}

static void fini(void *state)
{
    sendfile_server *sf = state;

    free(sf->file);
    free(sf->header);
    free(sf);
}

static void client_connected(evs_reader *r, evs_writer *w, void *state)
{
    sendfile_server *sf = state;
    ssize_t sent;
    int fd;

    (void)r;
    fd = open_regular(sf->file);
    if (fd < 0) {
        evs_log(EVS_LOG_WARN, "sendfile_server: cannot open %s: %s", sf->file,
                fd == -EINVAL ? "not a regular file" : strerror(-fd));
        return;
    }
    /* The header is queued first; evs_sendfile sends after what is queued. */
    if (sf->header && evs_write(w, sf->header, strlen(sf->header)) < 0) {
        close(fd);
        return;
    }
    sent = evs_sendfile(w, fd, 0, 0); /* count 0: up to the end of the file */
    if (sent < 0)
        evs_log(EVS_LOG_DEBUG, "sendfile_server: %s: %s", sf->file, evs_strerror((int)sent));
    else
        evs_log(EVS_LOG_DEBUG, "sendfile_server: sent %zd bytes of %s", sent, sf->file);
    close(fd);
    /* Returning closes the connection after flushing what is queued. */
}

EVS_PLUGIN_DEFINE(.name = "sendfile_server", .mode = EVS_PLUGIN_STREAM,
                  .client_connected = client_connected, .init = init, .fini = fini);
