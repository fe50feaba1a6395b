/**
 * @file evstream.h
 * evstream: asyncio's Streams and Transports/Protocols for C, on one
 * libevent event base per core. Include this one header.
 */
#ifndef EVSTREAM_H
#define EVSTREAM_H

#include <evstream/common.h>
#include <evstream/log.h>
#include <evstream/runtime.h>
#include <evstream/protocol.h>
#include <evstream/transport.h>
#include <evstream/task.h>
#include <evstream/stream.h>
#include <evstream/server.h>
#include <evstream/client.h>
#include <evstream/config.h>
#include <evstream/plugin.h>
#include <evstream/tls.h>
#include <evstream/pipe.h>
#include <evstream/datagram.h>
#include <evstream/subprocess.h>
#include <evstream/sendfile.h>

#endif
