#!/usr/bin/env python3
"""One SASL token login (XOAUTH2 or OAUTHBEARER) on IMAP, POP3, SMTP or ManageSieve, as a
mail client does it, for what curl will not do: curl 7.88 with --oauth2-bearer always
takes OAUTHBEARER when the server offers it, whatever --login-options say, and curl
speaks no ManageSieve.

    sasl-login.py PROTO HOST PORT MECH USER TOKEN [--tls] [--source ADDRESS]

PROTO is imap, pop3, smtp or sieve; --tls wraps the connection in TLS from the first byte
(certificates not checked: the test's servers are self-signed). Prints the dialogue as
curl -v does ("> " sent, "< " received; the client's SASL message shown as <token>).
Exits 0 when the server accepted the login, 67 when it refused it (curl's code), 1 on
anything else (no answer, a broken dialogue).
"""

import base64
import socket
import ssl
import sys


def main():
    args = sys.argv[1:]
    use_tls = "--tls" in args
    source = None
    if "--source" in args:
        i = args.index("--source")
        source = args[i + 1]
        del args[i : i + 2]
    args = [a for a in args if a != "--tls"]
    if len(args) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    proto, host, port, mech, user, token = args
    mech = mech.upper()
    if mech == "XOAUTH2":
        message = f"user={user}\x01auth=Bearer {token}\x01\x01"
        # What a client answers to the server's error challenge.
        error_reply = ""
    elif mech == "OAUTHBEARER":
        name = user.replace("=", "=3D").replace(",", "=2C")
        message = f"n,a={name},\x01auth=Bearer {token}\x01\x01"
        error_reply = "AQ=="
    else:
        print(f"unknown mechanism {mech}", file=sys.stderr)
        return 2
    initial = base64.b64encode(message.encode()).decode()

    sock = socket.create_connection(
        (host, int(port)), timeout=30, source_address=(source, 0) if source else None
    )
    if use_tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(sock, server_hostname=host)
    stream = sock.makefile("rwb")

    def send(line, shown=None):
        print(f"> {shown if shown is not None else line}", flush=True)
        stream.write(line.encode() + b"\r\n")
        stream.flush()

    def recv():
        raw = stream.readline()
        if not raw:
            print("< (connection closed)", flush=True)
            return None
        line = raw.decode(errors="replace").rstrip("\r\n")
        print(f"< {line}", flush=True)
        return line

    def answer_challenges(is_challenge, is_done, quoted=False):
        """Reads replies; answers the server's error challenge once; returns the final one."""
        answered = False
        while True:
            line = recv()
            if line is None:
                return None
            if is_challenge(line) and not answered:
                answered = True
                send(f'"{error_reply}"' if quoted else error_reply)
                continue
            if is_done(line):
                return line

    if proto == "imap":
        if recv() is None:
            return 1
        send(f"A001 AUTHENTICATE {mech} {initial}", f"A001 AUTHENTICATE {mech} <token>")
        final = answer_challenges(lambda l: l.startswith("+"), lambda l: l.startswith("A001 "))
        if final is None:
            return 1
        send("A002 LOGOUT")
        recv()
        return 0 if final.startswith("A001 OK") else 67
    if proto == "pop3":
        if recv() is None:
            return 1
        send(f"AUTH {mech} {initial}", f"AUTH {mech} <token>")
        final = answer_challenges(
            lambda l: l.startswith("+ ") or l == "+", lambda l: l.startswith(("+OK", "-ERR"))
        )
        if final is None:
            return 1
        send("QUIT")
        recv()
        return 0 if final.startswith("+OK") else 67
    if proto == "smtp":

        def reply():
            while True:
                line = recv()
                if line is None or len(line) < 4 or line[3] != "-":
                    return line

        if reply() is None:
            return 1
        send("EHLO client.test")
        if reply() is None:
            return 1
        send(f"AUTH {mech} {initial}", f"AUTH {mech} <token>")
        final = answer_challenges(lambda l: l.startswith("334"), lambda l: l[:1] in "2345" and l[3:4] != "-")
        if final is None:
            return 1
        send("QUIT")
        reply()
        return 0 if final.startswith("235") else 67
    if proto == "sieve":
        # RFC 5804: the greeting's capabilities end with OK; challenges are quoted strings
        # (or literals, which a token error message never needs), the end OK, NO or BYE.
        while True:
            line = recv()
            if line is None:
                return 1
            if line.startswith("OK"):
                break
        send(f'AUTHENTICATE "{mech}" "{initial}"', f'AUTHENTICATE "{mech}" <token>')
        final = answer_challenges(
            lambda l: l.startswith('"') or l.startswith("{"),
            lambda l: l.startswith(("OK", "NO", "BYE")),
            quoted=True,
        )
        if final is None:
            return 1
        if final.startswith("OK"):
            send("LOGOUT")
            recv()
            return 0
        return 67
    print(f"unknown protocol {proto}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as err:
        print(f"* {err}", flush=True)
        sys.exit(1)
