#!/usr/bin/env python3
"""Abuse loads against mailauthd's auth socket, for bench/abuse-memory.sh.

  abuse_clients.py SOCKET pipelined CONNECTIONS REQUESTS
      CONNECTIONS connections at once, each pipelining REQUESTS PLAIN logins in one write
      (alternately the right password of alice@example.org and wrong ones, and unknown
      users on every other connection); waits for every reply.
  abuse_clients.py SOCKET idle CONNECTIONS SECONDS
      CONNECTIONS connections that complete the handshake and then say nothing for SECONDS.

Prints one JSON line: what was sent and what came back. Loopback/unix only, bounded in
count and time.
"""
import base64
import json
import socket
import sys
import threading
import time


def handshake(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    f = s.makefile("rb")
    while f.readline().strip() != b"DONE":
        pass
    s.sendall(b"VERSION\t1\t2\nCPID\t1\n")
    return s, f


def pipelined(path, connections, requests):
    counts = {"ok": 0, "fail": 0, "temp": 0, "closed": 0}
    lock = threading.Lock()

    def one(c):
        s, f = handshake(path)
        user = b"alice@example.org" if c % 2 == 0 else b"nobody%d@example.org" % c
        buf = b""
        for i in range(requests):
            pw = b"bench-password" if i % 2 == 0 else b"wrong-%d" % i
            resp = base64.b64encode(b"\0" + user + b"\0" + pw)
            buf += b"AUTH\t%d\tPLAIN\tservice=imap\tresp=%s\n" % (i + 1, resp)
        s.sendall(buf)
        got = {"ok": 0, "fail": 0, "temp": 0, "closed": 0}
        for _ in range(requests):
            line = f.readline()
            if not line:
                got["closed"] += 1
                break
            if line.startswith(b"OK"):
                got["ok"] += 1
            elif b"temp_fail" in line:
                got["temp"] += 1
            else:
                got["fail"] += 1
        s.close()
        with lock:
            for k, v in got.items():
                counts[k] += v

    threads = [threading.Thread(target=one, args=(c,)) for c in range(connections)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts["seconds"] = round(time.monotonic() - started, 2)
    return counts


def idle(path, connections, seconds):
    held = []
    for _ in range(connections):
        held.append(handshake(path)[0])
    time.sleep(seconds)
    for s in held:
        s.close()
    return {"held": len(held), "seconds": seconds}


def main():
    path, kind, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if kind == "pipelined":
        out = pipelined(path, a, b)
    elif kind == "idle":
        out = idle(path, a, b)
    else:
        sys.exit("usage: abuse_clients.py SOCKET pipelined|idle N M")
    out["load"] = f"{kind} {a} {b}"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
