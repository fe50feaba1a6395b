#!/usr/bin/python3
"""Python asyncio echo servers, the model evstream follows (bench/ only).

usage: asyncio_echo.py {streams|protocol} ADDR [--tls CERT KEY] [--uvloop]
ADDR is PORT (on 127.0.0.1) or unix:/path. Single-threaded, one event loop.
"""
import argparse
import asyncio
import socket
import ssl
import sys


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False


async def echo_stream(reader, writer):
    try:
        while True:
            data = await reader.read(16384)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(args):
    ctx = None
    if args.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls[0], args.tls[1])
    loop = asyncio.get_running_loop()
    unix = args.addr.startswith("unix:")
    if args.mode == "streams":
        if unix:
            server = await asyncio.start_unix_server(echo_stream, args.addr[5:], ssl=ctx, backlog=4096)
        else:
            server = await asyncio.start_server(echo_stream, "127.0.0.1", int(args.addr), ssl=ctx,
                                                backlog=4096, reuse_address=True)
    else:
        if unix:
            server = await loop.create_unix_server(EchoProtocol, args.addr[5:], ssl=ctx, backlog=4096)
        else:
            server = await loop.create_server(EchoProtocol, "127.0.0.1", int(args.addr), ssl=ctx,
                                              backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["streams", "protocol"])
    p.add_argument("addr")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args()
    if a.uvloop:
        import uvloop
        uvloop.install()
    try:
        asyncio.run(main(a))
    except KeyboardInterrupt:
        pass
    sys.exit(0)
