/*
 * echo_protocol - the echo server as a protocol-mode plugin: callbacks on
 * the worker's event loop, no task per connection (the lightest way to
 * serve many connections).
 *
 * data_received writes the bytes back. If the client stops reading and the
 * write buffer goes over the high watermark, the transport calls
 * pause_writing and we stop reading from this client until resume_writing:
 * flow control without buffering without bound. eof_received returns false,
 * so the transport closes after flushing.
 *
 * Run it: add a listener with plugin = "echo_protocol" to the config (see
 * conf/evstreamd.conf), then: printf 'hello\n' | nc -q1 127.0.0.1 8889
 */
#include <evstream.h>

static void data_received(evs_transport *t, const void *data, size_t len, void *ctx)
{
    (void)ctx;
    evs_transport_write(t, data, len);
}

static bool eof_received(evs_transport *t, void *ctx)
{
    (void)t;
    (void)ctx;
    return false; /* close once everything is flushed */
}

static void pause_writing(evs_transport *t, void *ctx)
{
    (void)ctx;
    evs_transport_pause_reading(t);
}

static void resume_writing(evs_transport *t, void *ctx)
{
    (void)ctx;
    evs_transport_resume_reading(t);
}

static const evs_protocol echo_protocol = {
    .data_received = data_received,
    .eof_received = eof_received,
    .pause_writing = pause_writing,
    .resume_writing = resume_writing,
};

EVS_PLUGIN_DEFINE(.name = "echo_protocol", .mode = EVS_PLUGIN_PROTOCOL,
                  .protocol = &echo_protocol);
