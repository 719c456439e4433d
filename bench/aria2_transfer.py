#!/usr/bin/python3
"""libtorrent seed -> aria2c leecher on loopback: a second, independent
BitTorrent implementation as the downloading side, plus its memory use.

How aria2 finds the seed without a tracker: aria2c has no "add this peer"
option and ignores x.pe in magnets, so it is the *seed* that dials: aria2c
listens on a known port (--listen-port) and the libtorrent seed calls
connect_peer(127.0.0.1, that port) once the port is open; aria2 accepts
incoming peers for a torrent it is downloading like any client. This avoids
running a tracker (and its announce round-trips) inside the timed section.
The .torrent is v1-only (aria2 has no BitTorrent v2) with no announce URL.

Timing: aria2_seconds runs from spawning aria2c (so it includes aria2's
start-up) to aria2's --on-bt-download-complete hook firing, i.e. all pieces
received and hash-checked. aria2_exit_seconds runs to the process exit
(--seed-time=0 makes it quit after completing, but only on its next 1 s
housekeeping ticks, which adds ~2 s whatever the size). Peak RSS is
aria2c's VmHWM, sampled every 10 ms until it exits (see btlib.vm_hwm_kib
for why not wait4's ru_maxrss); CPU seconds do come from wait4. The download
is then SHA-256-compared with the source outside the timed section.

usage: /usr/bin/python3 bench/aria2_transfer.py [--size 1G] [--timeout SECS]
stdout (key=value): aria2_bytes aria2_seconds aria2_exit_seconds
    aria2_peak_rss_kib aria2_cpu_seconds aria2_verified
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import btlib  # noqa: E402
from btlib import result  # noqa: E402


def tcp_listening(port):
    """Is anything in LISTEN state on this TCP port? Read from /proc rather
    than probing, so aria2 never sees a bogus connection."""
    want = ":%04X" % port
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            pass
    return False


def run(args):
    size = btlib.parse_size(args.size)
    deadline = time.monotonic() + args.timeout
    with btlib.Workdir() as wd:
        ses, seed_h, _port, _data, torrent, digest, _plen = \
            btlib.start_seed(wd.path, size, timeout=args.timeout)
        out_dir = os.path.join(wd.path, "aria2")
        os.mkdir(out_dir)
        port = btlib.free_port()
        # aria2 runs this hook the moment the last piece is verified; the
        # process itself lingers ~2 s more (its 1 s housekeeping ticks), so
        # the hook gives the transfer time and wait4() the user-visible one.
        flag = os.path.join(wd.path, "complete")
        hook = os.path.join(wd.path, "on-complete.sh")
        with open(hook, "w") as f:
            f.write("#!/bin/sh\n: > '%s'\n" % flag)
        os.chmod(hook, 0o755)
        left = int(deadline - time.monotonic())
        argv = [
            "aria2c", "--dir=" + out_dir, "--torrent-file=" + torrent,
            # listen where the seed will dial, on loopback only
            "--listen-port=%d" % port, "--interface=127.0.0.1",
            # peers only from our seed: no DHT, LPD, PEX
            "--enable-dht=false", "--enable-dht6=false",
            "--bt-enable-lpd=false", "--enable-peer-exchange=false",
            # exit as soon as the download is complete
            "--seed-time=0",
            # aria2's default (prealloc) writes the whole file once before
            # downloading; fallocate is what a tuned user would pick
            "--file-allocation=falloc",
            "--bt-hash-check-seed=false", "--check-integrity=false",
            "--auto-save-interval=0", "--bt-save-metadata=false",
            "--allow-overwrite=true", "--disable-ipv6=true",
            "--summary-interval=0", "--console-log-level=warn",
            "--download-result=hide",
            "--on-bt-download-complete=" + hook,
            # bounded: give up when stalled or over budget, and die with us
            "--bt-stop-timeout=%d" % min(60, max(1, left)),
            "--stop=%d" % max(1, left),
            "--stop-with-process=%d" % os.getpid(),
        ]
        t0 = time.monotonic()
        console = open(os.path.join(wd.path, "aria2c.out"), "w+")
        p = wd.spawn(argv, stdout=console, stderr=console)
        hwm = btlib.HwmSampler(p.pid)
        hwm.start()

        # Dial aria2 as soon as it listens; retry in case the first attempt
        # lands before aria2 has registered the torrent.
        next_dial = 0.0
        status = rusage = t_complete = None
        while True:
            now = time.monotonic()
            if t_complete is None and os.path.exists(flag):
                t_complete = now
            if now > deadline:
                raise TimeoutError("aria2c did not finish in time")
            pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                t1 = time.monotonic()
                peak = hwm.stop()
                p.returncode = os.waitstatus_to_exitcode(status)
                break
            if now >= next_dial and tcp_listening(port) \
                    and not seed_h.status().num_peers:
                seed_h.connect_peer(("127.0.0.1", port))
                next_dial = now + 1.0
            btlib.check_alerts(ses)
            time.sleep(0.005)
        if p.returncode != 0:
            console.seek(0)
            sys.stderr.write(console.read())
            raise RuntimeError("aria2c exited with %d" % p.returncode)
        console.close()
        if t_complete is None:
            if not os.path.exists(flag):
                raise RuntimeError("aria2c exited without completing")
            t_complete = t1
        got = btlib.sha256_file(os.path.join(out_dir, "data.bin"))
        if got != digest:
            raise RuntimeError("aria2c's copy differs from the source")
        del ses

    result("aria2_bytes", size)
    result("aria2_seconds", t_complete - t0)
    result("aria2_exit_seconds", t1 - t0)
    result("aria2_peak_rss_kib", peak)
    result("aria2_cpu_seconds", rusage.ru_utime + rusage.ru_stime)
    result("aria2_verified", 1)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="file size (16M, 1G, bytes)")
    ap.add_argument("--timeout", type=float, default=600,
                    help="bound on the whole run, seconds")
    args = ap.parse_args()
    btlib.install_if_missing("aria2", "openssl")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
