#!/usr/bin/env python3
"""Slow HTTP clients for bench/slow-http.sh: CONNECTIONS connections to 127.0.0.1:PORT,
each sending one byte of a request head every INTERVAL seconds and never finishing it.
With --reconnect, a connection the server closes is opened again at once (as an attacker
would), so the flood holds for the whole DURATION. Prints one JSON object at the end:
how many connections were opened, how many the server closed, how many were still open,
and after how long the server closed them (p50, p99, max seconds)."""

import argparse
import asyncio
import json
import resource
import time

HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def one(port, interval, deadline, reconnect, stats):
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["opened"] += 1
        closed = False
        i = 0
        while time.monotonic() < deadline:
            byte = HEAD[i : i + 1] or b"a"
            i += 1
            try:
                writer.write(byte)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), timeout=interval)
                if not data:
                    closed = True
                    break
            except asyncio.TimeoutError:
                continue
            except OSError:
                closed = True
                break
        writer.close()
        if not closed:
            stats["still_open"] += 1
            return
        stats["closed_by_server"] += 1
        stats["lifetimes"].append(time.monotonic() - started)
        if not reconnect:
            return


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, round((len(values) - 1) * p))], 3)


async def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds to open them over")
    ap.add_argument("--reconnect", action="store_true")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stats = {"opened": 0, "closed_by_server": 0, "still_open": 0, "connect_errors": 0, "lifetimes": []}
    deadline = time.monotonic() + a.duration
    tasks = []
    for n in range(a.connections):
        tasks.append(asyncio.create_task(one(a.port, a.interval, deadline, a.reconnect, stats)))
        if n % 500 == 499:
            await asyncio.sleep(a.ramp * 500 / a.connections)
    await asyncio.gather(*tasks)
    lifetimes = stats.pop("lifetimes")
    stats["closed_after_s"] = {"p50": pct(lifetimes, 0.5), "p99": pct(lifetimes, 0.99), "max": pct(lifetimes, 1.0)}
    print(json.dumps(stats))


asyncio.run(main())
