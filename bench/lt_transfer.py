#!/usr/bin/python3
"""libtorrent -> libtorrent transfer on loopback: the "mature BitTorrent
client" baseline that p2pshare has to be compared with.

One libtorrent seed (in this process) and N libtorrent leechers, each in its
own child process with its own session: separate processes are closer to
real clients (no shared GIL, own memory, own file handles) and let us
report each leecher's peak RSS. No tracker, DHT, LSD, UPnP or NAT-PMP:
every leecher is connected to the seed with handle.connect_peer() and to
every other leecher (one connection per pair).

Timing: from the first leecher's add_torrent() to the moment the last one
has every piece (torrent_finished_alert). Every leecher then hashes its copy
with SHA-256 (outside the timed section) and it must equal the source's.

usage: /usr/bin/python3 bench/lt_transfer.py [--size 1G] [--leechers N]
           [--upload-limit BYTES_PER_S] [--piece-size BYTES] [--utp]
           [--timeout SECS]
stdout (key=value): lt_bytes lt_leechers lt_upload_limit lt_piece_size
    lt_seconds lt_leecher_seconds_min lt_leecher_seconds_max
    lt_seed_uploaded_bytes lt_seed_upload_copies lt_seed_bytes_per_s
    lt_leecher_peak_rss_kib lt_verified
"""

import argparse
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import btlib  # noqa: E402
from btlib import log, result  # noqa: E402


# ---------------------------------------------------------------- leecher --
def stdin_line(deadline):
    """Next command from the parent; EOF (parent gone) ends the worker."""
    left = max(0.0, deadline - time.monotonic())
    r, _, _ = select.select([sys.stdin], [], [], left)
    if not r:
        raise TimeoutError("no command from parent")
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    return line.split()


def say(*words):
    print(*words, flush=True)


def leecher(args):
    """Child process: one leecher session driven over stdin/stdout."""
    deadline = time.monotonic() + args.timeout
    ses = btlib.new_session(0, args.utp)
    say("port", btlib.wait_listen_port(ses))

    cmd = stdin_line(deadline)
    assert cmd[0] == "add", cmd
    t_add = time.monotonic()
    h = btlib.add_torrent(ses, args.torrent, args.save)
    h.connect_peer(("127.0.0.1", int(cmd[1])))
    say("added")

    # Leecher-to-leecher links come after every leecher has the torrent:
    # an incoming connection for an info-hash the receiver hasn't added yet
    # would be refused, and libtorrent only retries after a minute.
    cmd = stdin_line(deadline)
    assert cmd[0] == "connect", cmd
    for p in cmd[1:]:
        h.connect_peer(("127.0.0.1", int(p)))

    t_done = btlib.wait_finished(ses, h, deadline - time.monotonic())
    say("done", repr(t_add), repr(t_done))

    # Keep seeding to the others until the parent says everyone is done;
    # only then hash, so verification doesn't steal CPU from the transfer.
    cmd = stdin_line(deadline)
    assert cmd[0] == "verify", cmd
    digest = btlib.sha256_file(os.path.join(args.save, "data.bin"))
    rss = btlib.vm_hwm_kib()
    say("sha", digest, rss)
    stdin_line(deadline)  # "quit"


# ----------------------------------------------------------------- parent --
def run(args):
    size = btlib.parse_size(args.size)
    started = time.monotonic()
    deadline = started + args.timeout
    with btlib.Workdir() as wd:
        ses, seed_h, seed_port, _data, torrent, digest, plen = \
            btlib.start_seed(wd.path, size, args.upload_limit, args.utp,
                             args.piece_size, args.timeout)
        reader = btlib.LineReader()
        kids = []
        for i in range(args.leechers):
            save = os.path.join(wd.path, "leech%d" % i)
            os.mkdir(save)
            argv = [sys.executable, os.path.abspath(__file__), "--worker",
                    "--torrent", torrent, "--save", save,
                    "--timeout", str(args.timeout)]
            if args.utp:
                argv.append("--utp")
            kids.append(wd.spawn(argv, stdin=btlib.subprocess.PIPE,
                                 stdout=btlib.subprocess.PIPE, text=False))

        def send(k, *words):
            k.stdin.write((" ".join(map(str, words)) + "\n").encode())
            k.stdin.flush()

        def expect(k, word):
            parts = reader.readline(k.stdout, deadline).split()
            if not parts or parts[0] != word:
                raise RuntimeError("leecher said %r, expected %s"
                                   % (parts, word))
            return parts[1:]

        ports = [int(expect(k, "port")[0]) for k in kids]
        log("%d leecher(s) up, starting transfer" % len(kids))
        for k in kids:
            send(k, "add", seed_port)
        for k in kids:
            expect(k, "added")
        for i, k in enumerate(kids):
            send(k, "connect", *ports[:i])

        spans = []
        for k in kids:
            t_add, t_done = map(float, expect(k, "done"))
            spans.append((t_add, t_done))
            btlib.check_alerts(ses)
        total = max(d for _, d in spans) - min(a for a, _ in spans)
        uploaded = seed_h.status().total_payload_upload

        for k in kids:
            send(k, "verify")
        rss = []
        for k in kids:
            got, kib = expect(k, "sha")
            if got != digest:
                raise RuntimeError("leecher copy differs from the source")
            rss.append(int(kib))
        for k in kids:
            send(k, "quit")
        for k in kids:
            k.wait(timeout=max(1.0, deadline - time.monotonic()))
        del ses

    rate = uploaded / total
    result("lt_bytes", size)
    result("lt_leechers", args.leechers)
    result("lt_upload_limit", args.upload_limit)
    result("lt_piece_size", plen)
    result("lt_seconds", total)
    result("lt_leecher_seconds_min", min(d - a for a, d in spans))
    result("lt_leecher_seconds_max", max(d - a for a, d in spans))
    result("lt_seed_uploaded_bytes", uploaded)
    result("lt_seed_upload_copies", "%.3f" % (uploaded / size))
    result("lt_seed_bytes_per_s", "%.0f" % rate)
    result("lt_leecher_peak_rss_kib", max(rss))
    result("lt_verified", 1)

    if args.upload_limit:
        # A limit that libtorrent silently ignores (e.g. local-peer
        # exemption) would make the capped scenario meaningless: fail loudly.
        # Payload may sit a little under the cap (IP overhead counts
        # against it); it must not sit above it.
        if rate > args.upload_limit * 1.05:
            log("seed uploaded %.0f B/s > limit %d B/s: limit not honored"
                % (rate, args.upload_limit))
            return 1
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="file size (16M, 1G, bytes)")
    ap.add_argument("--leechers", type=int, default=1)
    ap.add_argument("--upload-limit", type=int, default=0,
                    help="seed upload cap in bytes/s (0 = none)")
    ap.add_argument("--piece-size", type=int, default=0,
                    help="bytes, power of two >= 16 KiB; 0 = libtorrent's pick")
    ap.add_argument("--utp", action="store_true",
                    help="allow uTP (default: TCP only)")
    ap.add_argument("--timeout", type=float, default=600,
                    help="bound on the whole run, seconds")
    # internal: leecher child process
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torrent", help=argparse.SUPPRESS)
    ap.add_argument("--save", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        leecher(args)
        return 0
    if args.leechers < 1:
        ap.error("--leechers must be >= 1")
    btlib.install_if_missing("openssl")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
