#!/usr/bin/env python3
"""Turns bench/run.sh's raw figures into the Markdown report.

Usage: report.py META.json RESULTS.jsonl [PERF-TOP.txt]
"""

import json
import sys


def load(meta_path, results_path):
    with open(meta_path) as f:
        meta = json.load(f)
    with open(results_path) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    return meta, runs


def ms(v):
    return "–" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def rate(v):
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def cpu_text(seconds, count):
    us = seconds / count * 1e6
    return f"{us:,.0f} µs" if us < 10_000 else f"{us / 1000:,.0f} ms"


def cpu_per_req(run, count):
    if not count:
        return "–"
    text = cpu_text(run["server_cpu_s"], count)
    parts = run.get("server_cpu_parts_s") or []
    if len(parts) > 1:
        names = run["server"].split("+")
        text += " (" + " + ".join(
            f"{names[i] if i < len(names) else '?'} {cpu_text(t, count)}" for i, t in enumerate(parts)
        ) + ")"
    return text


def group_row(run, g, label, server, cpu=True):
    lat = g.get("latency_ms", {})
    return (
        f"| {label} | {server} | {g['connections']} × {g['pipeline']} | {rate(g['rps'])} "
        f"| {ms(lat.get('p50'))} | {ms(lat.get('p99'))} | {ms(lat.get('max'))} "
        f"| {g['ok']} / {g['fail']} / {g['tempfail']}"
        f"{' / ' + str(g['unanswered']) + ' unanswered' if g.get('unanswered') else ''} "
        f"| {cpu_per_req(run, g.get('replies_total')) if cpu else 'see text'} | {run['loadavg']} |"
    )


HEADER = (
    "| Run | Server | Conns × in flight | Per second | p50 ms | p99 ms | max ms "
    "| ok / fail / tempfail | Server CPU per request | Load avg |\n"
    "|---|---|---|---:|---:|---:|---:|---|---:|---:|"
)


# The label suffix of each store backend's runs, and its name.
BACKENDS = {"": "SQLite", ", PostgreSQL": "PostgreSQL"}


def find(runs, label, server):
    for r in runs:
        if r.get("label") == label and r.get("server") == server:
            return r
    return None


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    meta, runs = load(sys.argv[1], sys.argv[2])
    perf = open(sys.argv[3]).read() if len(sys.argv) > 3 else None
    out = []
    p = out.append
    p(f"# mailauthd benchmark, {meta['date']}\n")
    p(
        f"- Machine: {meta['cpu']}, **{meta['cores']} cores**, {meta['mem']} RAM, "
        f"Linux {meta['kernel']}; Dovecot {meta['dovecot']}; mailauthd release build of "
        f"`{meta['commit']}` (its `src/` last changed in `{meta.get('src_commit', '?')}`), "
        "SQLite store."
    )
    p(f"- Command: `{meta['command']}`")
    if meta.get("nice", "0") != "0":
        p(
            f"- The benchmark ran at niceness {meta['nice']} (servers and load generator "
            "alike), so that unrelated work on the machine at the default niceness took as "
            "little of the two cores as possible; it still shows in the load average."
        )
    p(
        f"- Every run: {meta['duration']} s measured after {meta['warmup']} s of warm-up, "
        "over unix sockets on this machine, driven by `examples/loadgen.rs` (release, one "
        "thread) on the same cores as the servers."
    )
    p(
        f"- Database: {int(meta['mailboxes']):,} mailboxes in one domain; "
        f"{meta['app']} with an app password, {meta['blf']} with an imported BLF-CRYPT "
        f"(cost 5) hash from `doveadm pw`, {meta['argon']} with an Argon2id hash written "
        "by `mailauthd mailbox add` at `doveadm pw`'s default cost (m=64 MiB, t=3, p=1). "
        "Dovecot's passwd-files hold the same users and the very same hashes "
        "(`{PLAIN}` for the app-password users)."
    )
    p(
        "- *app passwords via the Lua adapter*: Dovecot's auth service configured with the "
        "shipped `conf-examples/dovecot` adapter (Lua passdb in auth workers), which forwards "
        "each login to mailauthd; its CPU column shows both servers together and each apart.\n"
        "- Latency is per request, from writing it to reading its reply. *Server CPU per "
        "request* is the server's user+system CPU time over the run divided by the "
        "requests it answered (Dovecot: master and all its children). *Load avg* is the "
        "1-minute load average when the run started: anything above ~1 means other work "
        "was competing for the two cores, which lowers rates and raises latencies for "
        "both servers alike; CPU per request is much less affected.\n"
    )

    p("## Logins over the auth socket\n")
    p(HEADER)
    order = [
        ("PLAIN passwd-file", "dovecot"),
        ("app passwords", "mailauthd"),
        ("app passwords, 1 conn x 1", "mailauthd"),
        ("app passwords via the Lua adapter", "dovecot+mailauthd"),
        ("BLF-CRYPT cost 5", "dovecot"),
        ("BLF-CRYPT cost 5 (imported)", "mailauthd"),
        ("ARGON2ID m=64M t=3", "dovecot"),
        ("Argon2id m=64M t=3", "mailauthd"),
    ]
    for label, server in order:
        r = find(runs, label, server)
        if r and "rps" in r:
            p(group_row(r, r, label, server))
    p("")

    p("## Head-of-line blocking: hashed logins saturating, cheap requests measured\n")
    p(
        "One run per server: 8 connections keep 2 Argon2id logins each in flight (16 at "
        "once, far more than two cores can hash), while 4 other connections send "
        "app-password logins (Dovecot: `{PLAIN}` logins) one at a time"
        + (", and 4 send policy requests" if meta.get("policy") == "yes" else "")
        + ". CPU per request is not split between the groups.\n"
    )
    p(HEADER)
    for server in ("dovecot", "mailauthd"):
        for r in runs:
            if r.get("server") == server and r.get("label", "").startswith("head-of-line"):
                for g in r.get("groups", []):
                    p(group_row(r, g, f"{r['label']}: **{g['name']}**", server, cpu=False))
    p("")

    p(f"## Policy requests (Postfix policy protocol)\n")
    if meta.get("policy") != "yes":
        p(
            "This mailauthd build has no policy listener yet, so only the Python "
            "comparison server (`bench/policy_server.py`) was measured.\n"
        )
    p(HEADER)
    for server in ("mailauthd", "python"):
        r = find(runs, "policy", server)
        if r and "rps" in r:
            p(group_row(r, r, "policy", server))
    p("")

    warm = [r for r in runs if r.get("label", "").endswith(", cache warm") and "rps" in r]
    if warm:
        p("## Hashed logins with the verification cache warm\n")
        p(
            "Every run above has mailauthd's verification cache off, as Dovecot runs without "
            "its auth cache. Here mailauthd restarts with it on and repeats the hashed runs: "
            "after each mailbox's first login, a repeat with the same password skips the hash "
            "(the mailbox row is still read on every login). This is what a mail client that "
            "logs in every few minutes costs; it is not a like-for-like comparison with the "
            "rows above.\n"
        )
        p(HEADER)
        for r in warm:
            p(group_row(r, r, r["label"], "mailauthd"))
        p("")

    warm_tok = find(runs, "access tokens (JWT), warm cache", "mailauthd")
    cold_tok = find(runs, "access tokens (JWT), cold cache", "mailauthd")
    cold_one = find(runs, "access tokens (JWT), cold cache, 1 in flight", "mailauthd")
    if warm_tok or cold_tok:
        p("## Access-token logins (webmail sign-on)\n")
        p(
            "XOAUTH2 over the auth socket with RS256 JWT access tokens, verified against the "
            "provider's key set (fetched once from a static file server on loopback). Warm: "
            "a few hundred tokens, each seen before, so the verdict comes from the validation "
            "cache; cold: a freshly started daemon and every request a token it has not seen, "
            "so each login checks an RSA signature. The mailbox row is read on every login "
            "either way. The cold run is made twice: 16 × 8 like the app-password run above "
            "(shown again here for comparison), where latency is mostly the queue, and 16 × 1, "
            "one login at a time per connection as a webmail sends them.\n"
        )
        p(HEADER)
        for r in (find(runs, "app passwords", "mailauthd"), warm_tok, cold_tok, cold_one):
            if r and "rps" in r:
                p(group_row(r, r, r["label"], "mailauthd"))
        p("")

    p("## Memory (mailauthd)\n")
    p("| | RSS |\n|---|---:|")
    p(f"| idle, after start | {int(meta['rss_idle']) / 1024:.1f} MiB |")
    p(f"| after all the runs above | {int(meta['rss_loaded']) / 1024:.1f} MiB |")
    p(f"| peak (VmHWM) | {int(meta['rss_peak']) / 1024:.1f} MiB |")
    p("")

    big = int(meta["big"])
    p(f"## Database size and backend: {int(meta['mailboxes']):,} vs {big:,} mailboxes\n")
    grown = [r for r in runs if "@" in r.get("label", "")]
    on_postgres = [r for r in runs if ", PostgreSQL" in r.get("label", "")]
    if grown:
        p(
            f"The same app-password logins after growing the database to {big:,} mailboxes, "
            f"each with an app password ({meta['big_note']}); mailauthd restarted.\n"
        )
    else:
        p("The grown database was skipped (BENCH_BIG).\n")
    if on_postgres:
        p(
            "The *PostgreSQL* rows are the same runs with the store on PostgreSQL, holding "
            "the very rows of the SQLite database, copied over at each size "
            "(bench/postgres-runs.sh).\n"
        )
    else:
        p("The PostgreSQL runs were skipped (BENCH_POSTGRES_URL).\n")
    if grown or on_postgres:
        p(HEADER)
        for backend in BACKENDS:
            for label in ("app passwords", "app passwords, 1 conn x 1"):
                small, large = f"{label}{backend}", f"{label}{backend} @ {big}"
                for r in (find(runs, small, "mailauthd"), find(runs, large, "mailauthd")):
                    if r:
                        p(group_row(r, r, r["label"], "mailauthd"))
        p("")

    p("## Against the targets\n")
    p(
        "The performance targets (each server on the same two cores, one run), then the "
        "latency and token promises. *Estimate* rows say what the CPU cost "
        "per request allows on an idle machine, where mailauthd has both cores and Dovecot "
        "2.3 its one auth process; they are shown, not judged.\n"
    )
    p("| Target | Measured | |\n|---|---|---|")

    def per_request(r):
        return r["server_cpu_s"] / max(r.get("replies_total") or 0, 1)

    cores = min(2, int(meta["cores"]))
    dp = find(runs, "PLAIN passwd-file", "dovecot")
    app = find(runs, "app passwords", "mailauthd")
    if dp and app and dp.get("rps"):
        ratio = app["rps"] / dp["rps"]
        p(
            f"| app passwords 16 × 8 ≥ 1.5× Dovecot `{{PLAIN}}` | {rate(app['rps'])}/s vs "
            f"{rate(dp['rps'])}/s = {ratio:.2f}× | {verdict(ratio >= 1.5)} |"
        )
        d_cpu, m_cpu = per_request(dp), per_request(app)
        p(
            f"| CPU per login ≤ Dovecot's | {m_cpu * 1e6:.0f} µs vs {d_cpu * 1e6:.0f} µs | "
            f"{verdict(m_cpu <= d_cpu)} |"
        )
        p(
            f"| app passwords, estimate from CPU per login | {cores} × {d_cpu * 1e6:.0f} / "
            f"{m_cpu * 1e6:.0f} µs → {cores * d_cpu / m_cpu:.2f}× | estimate |"
        )
    for d_label, m_label, name in (
        ("BLF-CRYPT cost 5", "BLF-CRYPT cost 5 (imported)", "BLF-CRYPT"),
        ("ARGON2ID m=64M t=3", "Argon2id m=64M t=3", "Argon2id"),
    ):
        d, m = find(runs, d_label, "dovecot"), find(runs, m_label, "mailauthd")
        if d and m and d.get("rps"):
            ratio = m["rps"] / d["rps"]
            p(
                f"| {name} ≥ 1.8× Dovecot | {rate(m['rps'])}/s vs {rate(d['rps'])}/s = "
                f"{ratio:.2f}× | {verdict(ratio >= 1.8)} |"
            )
            d_cpu, m_cpu = per_request(d), per_request(m)
            if name == "Argon2id":
                p(
                    f"| Argon2id CPU per hash ≤ Dovecot's (libsodium) | {m_cpu * 1000:.1f} ms vs "
                    f"{d_cpu * 1000:.1f} ms | {verdict(m_cpu <= d_cpu)} |"
                )
            p(
                f"| {name}, estimate from CPU per hash | {cores} × {d_cpu * 1000:.2f} / "
                f"{m_cpu * 1000:.2f} ms → {cores * d_cpu / m_cpu:.2f}× | estimate |"
            )
    hol = find(runs, "head-of-line: Argon2id saturating", "mailauthd")
    if hol:
        for g in hol.get("groups", []):
            if g["name"] in ("app", "policy"):
                p99 = g["latency_ms"]["p99"]
                p(
                    f"| {g['name']} p99 < 5 ms while Argon2id saturates the hash pool | "
                    f"{ms(p99)} ms | {verdict(p99 is not None and p99 < 5)} |"
                )
    pol, py = find(runs, "policy", "mailauthd"), find(runs, "policy", "python")
    if pol and pol.get("rps") is not None:
        p99 = pol["latency_ms"]["p99"]
        times = pol["rps"] / py["rps"] if py and py.get("rps") else 0
        p(
            f"| policy at {pol['connections']} connections ≥ 5× the Python server and "
            f"≥ 40,000/s | {rate(pol['rps'])}/s vs {rate(py['rps']) if py else '–'}/s = "
            f"{times:.1f}×, p99 {ms(p99)} ms | {verdict(times >= 5 and pol['rps'] >= 40000)} |"
        )
    else:
        p("| policy ≥ 5× Python and ≥ 40,000/s | not measured: no policy listener | – |")
    ad = find(runs, "app passwords via the Lua adapter", "dovecot+mailauthd")
    if ad and ad.get("rps") is not None and len(ad.get("server_cpu_parts_s") or []) > 1:
        dovecot_side = ad["server_cpu_parts_s"][0] / max(ad.get("replies_total") or 0, 1)
        p(
            f"| Dovecot's CPU per login through the shipped Lua adapter halved: ≤ 189 µs "
            f"(378 µs in bench/results/2026-11-29-5.md) | {dovecot_side * 1e6:.0f} µs, "
            f"{rate(ad['rps'])}/s | {verdict(dovecot_side <= 189e-6)} |"
        )
    else:
        p("| Dovecot's CPU per login through the Lua adapter halved | not measured | – |")
    for backend in BACKENDS:
        for label in ("app passwords", "app passwords, 1 conn x 1"):
            small = find(runs, f"{label}{backend}", "mailauthd")
            large = find(runs, f"{label}{backend} @ {big}", "mailauthd")
            if small and large:
                r50 = large["latency_ms"]["p50"] / small["latency_ms"]["p50"]
                r99 = large["latency_ms"]["p99"] / small["latency_ms"]["p99"]
                p(
                    f"| {BACKENDS[backend]}: {int(meta['mailboxes']):,} → {big:,} mailboxes, "
                    f"p50 ≤ 1.2×, {small['connections']} × {small['pipeline']} in flight | "
                    f"p50 ×{r50:.2f} (p99 ×{r99:.2f}) | {verdict(r50 <= 1.2)} |"
                )
    idle, peak = int(meta["rss_idle"]) / 1024, int(meta["rss_peak"]) / 1024
    p(f"| RSS idle < 20 MiB | {idle:.1f} MiB | {verdict(idle < 20)} |")
    p(f"| RSS peak through the bench < 100 MiB | {peak:.1f} MiB | {verdict(peak < 100)} |")
    if app:
        p99 = app["latency_ms"]["p99"]
        p(f"| app passwords p99 < 5 ms | {ms(p99)} ms | {verdict(p99 is not None and p99 < 5)} |")
    warm_tok = find(runs, "access tokens (JWT), warm cache", "mailauthd")
    cold_tok = find(runs, "access tokens (JWT), cold cache", "mailauthd")
    cold_one = find(runs, "access tokens (JWT), cold cache, 1 in flight", "mailauthd")
    if warm_tok and app and warm_tok.get("rps") is not None:
        p(
            f"| access tokens, warm cache ≥ the app-password rate | {rate(warm_tok['rps'])}/s vs "
            f"{rate(app['rps'])}/s | {verdict(warm_tok['rps'] >= app['rps'])} |"
        )
    if cold_tok and cold_tok.get("rps") is not None:
        p(
            f"| access tokens, cold cache ≥ 5,000/s | {rate(cold_tok['rps'])}/s | "
            f"{verdict(cold_tok['rps'] >= 5000)} |"
        )
    for r in (warm_tok, cold_tok, cold_one):
        if r and r.get("rps") is not None:
            p99 = r["latency_ms"]["p99"]
            p(f"| {r['label']}: p99 < 5 ms | {ms(p99)} ms | {verdict(p99 is not None and p99 < 5)} |")
    p("")

    if perf:
        p(
            "## Where mailauthd's CPU time went (app-password run, 16 × 8)\n\n"
            "`perf record --call-graph dwarf`, inclusive view: the share of samples taken "
            "inside each function or anything it called.\n"
        )
        p("```")
        p(perf.rstrip())
        p("```\n")

    p("## Exact load-generator commands\n")
    p("Paths are in the script's temporary folder.\n")
    p("```")
    for r in runs:
        p(f"# {r['label']} [{r['server']}]")
        p(r["command"])
    p("```")
    print("\n".join(out))


if __name__ == "__main__":
    main()
