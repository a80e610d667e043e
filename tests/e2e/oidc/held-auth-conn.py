#!/usr/bin/env python3
"""Holds ONE connection to mailauthd's auth socket (Dovecot's auth-client protocol) open
and sends logins on it when told, so the end-to-end test can show that a connection made
before a reload is still served after it.

Usage: held-auth-conn.py SOCKET_PATH
  stdin, one command a line:
    auth ID ADDRESS PASSWORD   send AUTH ID PLAIN service=imap on the held connection
    quit                       close the connection and exit
  stdout, one line each:
    ready spid=N cuid=N        the handshake ended with DONE and VERSION/CPID were sent
    reply ID LINE              the daemon's answer (OK/FAIL, tabs shown as "|")
    closed                     the daemon closed the held connection
    error TEXT                 anything else that went wrong
"""

import base64
import select
import socket
import sys

TIMEOUT = 20.0


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8", "replace")

    def still_open(self):
        """False when the daemon has closed its side (EOF waiting to be read)."""
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return True
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False


def say(text):
    print(text, flush=True)


def main():
    try:
        conn = Conn(sys.argv[1])
        hello = {}
        while True:
            fields = conn.line().split("\t")
            if fields[0] == "DONE":
                break
            hello[fields[0]] = fields[1:]
        conn.sock.sendall(b"VERSION\t1\t2\nCPID\t1\n")
    except (OSError, EOFError) as e:
        say(f"error handshake: {e!r}")
        return 1
    say(f"ready spid={hello.get('SPID', ['?'])[0]} cuid={hello.get('CUID', ['?'])[0]}")

    for command in sys.stdin:
        words = command.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        if words[0] != "auth" or len(words) != 4:
            say(f"error unknown command {command.strip()!r}")
            continue
        request_id, address, password = words[1:]
        if not conn.still_open():
            say("closed")
            return 1
        resp = base64.b64encode(f"\0{address}\0{password}".encode()).decode()
        try:
            conn.sock.sendall(f"AUTH\t{request_id}\tPLAIN\tservice=imap\tresp={resp}\n".encode())
            while True:
                fields = conn.line().split("\t")
                if len(fields) > 1 and fields[1] == request_id and fields[0] in ("OK", "FAIL"):
                    say(f"reply {request_id} {'|'.join(fields)}")
                    break
        except EOFError:
            say("closed")
            return 1
        except OSError as e:
            say(f"error {e!r}")
            return 1
    conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
