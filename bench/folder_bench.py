#!/usr/bin/python3
"""A shared folder (issue 11): `peer-server --share-dir DIR` on a folder of
10,000 small files (1-64 KiB, random sizes) and 10 large ones (100 MiB), all
made from a fixed seed. Goal 9 of bench/p2pshare_bench.py; run alone with

    /usr/bin/python3 bench/folder_bench.py [--small] [--bin build/release/p2pshare]

(the same options as p2pshare_bench.py; it runs that script's goal 9).
--small (BENCH_SMALL=1 in bench/run.sh): 1,000 small files and 2 of 8 MiB.

Each run, with a fresh central server and a fresh peer-server data dir:
  sha256sum   `find DIR -type f -print0 | xargs -0 sha256sum` of the same
              files, timed first. Nothing is dropped from the page cache
              (the files were just written, or read by the previous run):
              both sides read cached files.
  first share from spawning `peer-server --share-dir DIR` until the central
              server lists every file (`list-files --json`, polled once the
              peer-server logs that its first pass over the folder is done).
              The peer-server's CPU time over the same span, and its peak
              RSS (VmHWM) once everything is listed.
  restart     SIGTERM, then the same command again on the same data dir:
              time until its first pass is done (logged with the count of
              files hashed and reused) and until every file is listed again.
              Nothing changed, so nothing must be hashed again.
The central server is started with --max-files-per-peer 20000: its default
(10,000 files per peer) is below this folder's 10,010 files.
"""

import hashlib
import json
import os
import random
import re
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import btlib  # noqa: E402
from btlib import log  # noqa: E402
from p2pshare_bench import Failure, check, median, proc_cpu  # noqa: E402

MiB = 1 << 20
SEED = 11
SETTLED = re.compile(r"share-dir (.+): (\d+) files shared, (\d+) hashed, (\d+) unchanged since the last run, "
                     r"(\d+) skipped")


def shape(small):
    """(small files, their least and largest size, large files, their size)."""
    if small:
        return 1000, 1024, 64 * 1024, 2, 8 * MiB
    return 10000, 1024, 64 * 1024, 10, 100 * MiB


def make_tree(root, small):
    """The folder, the same bytes from the same seed every time: small files
    in 100 subfolders, large ones in large/. Returns (files, bytes)."""
    count, least, most, large, large_size = shape(small)
    rng = random.Random(SEED)
    total = 0
    for i in range(count):
        d = os.path.join(root, "s%02d" % (i % 100))
        os.makedirs(d, exist_ok=True)
        n = rng.randint(least, most)
        with open(os.path.join(d, "f%05d.bin" % i), "wb") as f:
            f.write(rng.randbytes(n))
        total += n
    os.makedirs(os.path.join(root, "large"), exist_ok=True)
    for i in range(large):
        # AES-CTR of zeros under a key made from the seed (btlib.make_file's
        # generator, keyed): incompressible, reproducible, fast.
        key = hashlib.sha256(b"p2pshare-folder-bench-%d-%d" % (SEED, i)).hexdigest()[:32]
        with open(os.path.join(root, "large", "l%02d.bin" % i), "wb") as out:
            head = subprocess.Popen(["head", "-c", str(large_size), "/dev/zero"], stdout=subprocess.PIPE)
            subprocess.run(["openssl", "enc", "-aes-128-ctr", "-nosalt", "-K", key, "-iv", "0" * 32],
                           stdin=head.stdout, stdout=out, check=True)
            head.stdout.close()
            head.wait()
        total += large_size
    return count + large, total


def sha256sum_tree(root):
    """Seconds and CPU seconds of `find | xargs -0 sha256sum` over the folder."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run("find '%s' -type f -print0 | xargs -0 sha256sum > /dev/null" % root, shell=True, check=True,
                   timeout=1200)
    t = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return t, ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime


def wait_settled(b, server, since, timeout):
    """The peer-server's log line for the end of its first pass over the
    folder: (seconds since `since`, files, hashed, reused, skipped)."""
    deadline = time.monotonic() + timeout
    seen, tail = 0, ""
    while time.monotonic() < deadline:
        # Only what was appended since the last look (the log has a line per file shared).
        with open(server.log_path, "rb") as f:
            f.seek(seen)
            more = f.read()
        seen += len(more)
        lines = (tail + more.decode(errors="replace")).split("\n")
        tail = lines.pop()
        m = next((m for m in map(SETTLED.search, lines) if m), None)
        if m:
            return (time.monotonic() - since, int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)))
        if server.proc.poll() is not None:
            raise Failure("the peer-server exited (%s): %s" % (server.proc.returncode, server.log_tail()))
        time.sleep(0.02)
    raise Failure("the peer-server did not finish its pass over the folder in %d s: %s"
                    % (timeout, server.log_tail()))


def listed(b, central):
    r = b.cli("list-files", "--central-server-addr", central.addr, "--json", timeout=120)
    return len(json.loads(r.stdout))


def wait_listed(b, central, n, since, timeout):
    """Seconds since `since` until the central server lists `n` files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listed(b, central) >= n:
            return time.monotonic() - since
        time.sleep(0.05)
    raise Failure("the central server lists %d files, not %d, after %d s" % (listed(b, central), n, timeout))


def run(b):
    """Goal 9 (b: p2pshare_bench.Bench)."""

    tree = os.path.join(b.wd.path, "folder")
    t0 = time.monotonic()
    files, size = make_tree(tree, b.small)
    os.sync()
    log("goal9: made %d files, %.1f MiB, in %.1f s" % (files, size / MiB, time.monotonic() - t0))
    limit = 600
    sha_t, sha_cpu, first_t, settle_t, first_cpu, hwm, re_t, re_listed_t, re_hwm, hashed, reused = (
        [] for _ in range(11))
    for r in range(b.runs):
        t, cpu = sha256sum_tree(tree)
        sha_t.append(t)
        sha_cpu.append(cpu)
        central = b.central("--max-files-per-peer", "20000")
        d = b.scratch("peer")
        argv = [b.bin, "peer-server", "--central-server-addr", central.addr, "--addr", "127.0.0.1:0",
                "--data-dir", d, "--share-dir", tree, "--log-level", "info"]
        t0 = time.monotonic()
        peer = b.spawn_server(argv, "peer", d)
        settled = wait_settled(b, peer, t0, limit)
        if settled[1] != files:
            raise Failure("the peer-server shares %d files of %d" % (settled[1], files))
        first_t.append(wait_listed(b, central, files, t0, limit))
        first_cpu.append(proc_cpu(peer.pid))
        settle_t.append(settled[0])
        hwm.append(btlib.vm_hwm_kib(peer.pid))
        b.stop(peer)
        # The same command on the same data dir, nothing changed.
        t0 = time.monotonic()
        peer = b.spawn_server(argv, "peer", d)
        again = wait_settled(b, peer, t0, limit)
        re_listed_t.append(wait_listed(b, central, files, t0, limit))
        re_t.append(again[0])
        hashed.append(again[2])
        reused.append(again[3])
        re_hwm.append(btlib.vm_hwm_kib(peer.pid))
        b.stop(peer)
        b.stop(central)
        log("goal9 run %d: sha256sum %.3f s (%.3f s CPU); first share: pass done %.3f s, all listed %.3f s "
            "(%.3f s CPU), VmHWM %d KiB; restart: pass done %.3f s (%d hashed, %d reused), all listed %.3f s"
            % (r + 1, sha_t[-1], sha_cpu[-1], settle_t[-1], first_t[-1], first_cpu[-1], hwm[-1], re_t[-1],
               hashed[-1], reused[-1], re_listed_t[-1]))
    t, t_sha, t_re = median(first_t), median(sha_t), median(re_t)
    cpu, cpu_sha = median(first_cpu), median(sha_cpu)
    no_rehash = all(h == 0 for h in hashed) and all(x == files for x in reused)
    spread = lambda xs: "runs: %s" % ", ".join("%.3f s" % x for x in xs)  # noqa: E731
    checks = [
        check("first share: peer-server start until the central server lists all %d files" % files,
              "%.3f s" % t, "sha256sum %.3f s" % t_sha, t / t_sha, "informational (issue 11: against sha256sum)",
              None, "ratio = p2pshare time / sha256sum time; %s; sha256sum %s; %.1f MiB in all"
              % (spread(first_t), spread(sha_t), size / MiB)),
        check("first share: CPU time (peer-server vs sha256sum)", "%.3f s CPU" % cpu, "sha256sum %.3f s CPU" % cpu_sha,
              cpu / cpu_sha if cpu_sha else None, "informational", None,
              "independent of the machine's load; the peer-server's CPU from spawn to all listed"),
        check("peer-server peak RSS (VmHWM) with the folder shared", "%.1f MiB" % (max(hwm) / 1024), "", None,
              "informational", None, "first share; after the restart: %.1f MiB" % (max(re_hwm) / 1024)),
        check("restart, nothing changed: until its pass over the folder is done", "%.3f s" % t_re,
              "first share %.3f s" % t, t_re / t, "nothing hashed again", no_rehash,
              "hashed again: %s; reused: %s; %s; all listed again after %s"
              % (", ".join(map(str, hashed)), ", ".join(map(str, reused)), spread(re_t),
                 ", ".join("%.3f s" % x for x in re_listed_t))),
    ]
    print("goal9 shared folder, %d files (%.1f MiB): all listed %.3f s after start vs sha256sum %.3f s -> %.2fx; "
          "peer-server VmHWM %.1f MiB; restart %.3f s (%s hashed again) -> %.2fx the first"
          % (files, size / MiB, t, t_sha, t / t_sha, max(hwm) / 1024, t_re, "/".join(map(str, hashed)), t_re / t),
          flush=True)
    return {"title": "Shared folder: %d small files (1-64 KiB) and %d of %d MiB" % (shape(b.small)[0],
                                                                                   shape(b.small)[3],
                                                                                   shape(b.small)[4] // MiB),
            "figures": {"files": files, "bytes": size, "seconds": t, "seconds_runs": first_t,
                        "pass_done_seconds_runs": settle_t, "sha256sum_seconds": t_sha,
                        "sha256sum_seconds_runs": sha_t, "cpu_seconds_runs": first_cpu,
                        "sha256sum_cpu_seconds_runs": sha_cpu, "peak_rss_kib_runs": hwm,
                        "restart_seconds": t_re, "restart_seconds_runs": re_t,
                        "restart_listed_seconds_runs": re_listed_t, "restart_hashed_runs": hashed,
                        "restart_reused_runs": reused, "restart_peak_rss_kib_runs": re_hwm},
            "checks": checks}


if __name__ == "__main__":
    import p2pshare_bench  # noqa: E402

    sys.argv[1:1] = ["--goals", "9"]
    sys.exit(p2pshare_bench.main())
