#!/usr/bin/python3
"""Talks to mailauthd's sockets from inside the test container (tests/e2e/systemd.sh).

  authclient.py auth SOCKET [USER PASSWORD [SERVICE]]
      Dovecot auth protocol: prints the server's handshake (VERSION ... DONE); with a
      user and password, then sends VERSION and CPID and one AUTH PLAIN request and
      prints the reply line (OK/FAIL ...).
  authclient.py userdb SOCKET
      auth-master protocol: prints the server's two greeting lines (VERSION, SPID).
  authclient.py policy SOCKET SENDER RECIPIENT
      Postfix policy protocol: one unauthenticated RCPT request; prints the reply.

Exit 0 when the conversation completed, 1 otherwise (the reason on stderr).
"""

import base64
import os
import socket
import sys


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Long enough for socket activation to start the daemon and for one Argon2 hash.
    s.settimeout(30)
    s.connect(path)
    return s, s.makefile("rb")


def line(reader):
    raw = reader.readline()
    if not raw.endswith(b"\n"):
        sys.exit("connection closed early")
    text = raw.decode("utf-8", "replace").rstrip("\n")
    print(text)
    return text


def auth(path, user=None, password=None, service="imap"):
    s, r = connect(path)
    while line(r) != "DONE":
        pass
    if user is None:
        return
    s.sendall(b"VERSION\t1\t2\nCPID\t%d\n" % os.getpid())
    resp = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    s.sendall(b"AUTH\t1\tPLAIN\tservice=%s\tresp=%s\n" % (service.encode(), resp))
    line(r)


def userdb(path):
    _, r = connect(path)
    line(r)
    line(r)


def policy(path, sender, recipient):
    s, r = connect(path)
    request = (
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
        "client_address=192.0.2.1\nclient_name=unknown\nhelo_name=client.example\n"
        f"sender={sender}\nrecipient={recipient}\n\n"
    )
    s.sendall(request.encode())
    while line(r) != "":
        pass


def main(argv):
    try:
        if len(argv) >= 3 and argv[1] == "auth" and len(argv) in (3, 5, 6):
            auth(*argv[2:])
        elif len(argv) == 3 and argv[1] == "userdb":
            userdb(argv[2])
        elif len(argv) == 5 and argv[1] == "policy":
            policy(*argv[2:])
        else:
            sys.exit(__doc__)
    except OSError as e:
        sys.exit(f"{argv[2]}: {e}")


if __name__ == "__main__":
    main(sys.argv)
