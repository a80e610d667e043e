#!/usr/bin/env python3
"""A small Postfix SMTPD policy server in Python (asyncio), for comparison and for
checking the load generator's policy mode.

It does what a typical hand-written sender-ownership policy service does: for an
authenticated session, the envelope sender must be the SASL user itself (or a
sub-address of it, user+tag@domain); otherwise REJECT. Unauthenticated sessions get
DUNNO. Ownership is decided from the two names alone, with no store lookup at all, so
this is the best case for a Python server: no database round trip.

Usage: policy_server.py unix:/path/to/socket | tcp:HOST:PORT
"""

import asyncio
import os
import sys


def owns(user: bytes, sender: bytes) -> bool:
    user, sender = user.lower(), sender.lower()
    if user == sender:
        return True
    local, _, domain = sender.partition(b"@")
    base, plus, _ = local.partition(b"+")
    return bool(plus) and base + b"@" + domain == user


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            attrs = {}
            while True:
                line = await reader.readline()
                if not line:
                    return
                line = line.rstrip(b"\r\n")
                if not line:
                    break
                name, _, value = line.partition(b"=")
                attrs[name] = value
            user = attrs.get(b"sasl_username", b"")
            sender = attrs.get(b"sender", b"")
            if not user or owns(user, sender):
                action = b"DUNNO"
            else:
                action = b"REJECT 5.7.1 <" + sender + b">: not owned by " + user
            writer.write(b"action=" + action + b"\n\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(target: str) -> None:
    if target.startswith("unix:"):
        path = target[5:]
        if os.path.exists(path):
            os.unlink(path)
        server = await asyncio.start_unix_server(handle, path=path, limit=1 << 16)
    elif target.startswith("tcp:"):
        host, _, port = target[4:].rpartition(":")
        server = await asyncio.start_server(handle, host, int(port), limit=1 << 16)
    else:
        sys.exit(__doc__)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        asyncio.run(main(sys.argv[1]))
    except KeyboardInterrupt:
        pass
