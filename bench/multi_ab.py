#!/usr/bin/env python3
# Usage: bench/multi_ab.py BIN_A[,BIN_B] [RUNS] [SEEDS]   (SEEDS default 1,4;
#        PERF=prefix records perf data of the seeds and of the downloader)
"""Goal 2 taken apart: for each binary and each seed count, a central, that
many seeds of the same 1 GiB file, and RUNS downloads with a fresh downloader
each. Prints wall time, the CPU (user+sys) of the seeds together and of the
downloader, and their context switches, interleaving every setup run by run
so that the machine's drift hits them all alike."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ab_lib import Network, cli, cpu, perf_start, perf_stop


def switches(pid):
    """Voluntary and involuntary context switches of a running process."""
    v = n = 0
    for line in open("/proc/%d/status" % pid):
        if line.startswith("voluntary_ctxt_switches"):
            v = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches"):
            n = int(line.split()[1])
    return v, n


class Setup(Network):
    def __init__(self, b, wd, src, seeds):
        super().__init__(b, wd)
        self.seeds = [self.peer("seed%d" % i) for i in range(seeds)]
        time.sleep(0.5)
        for i, (_, addr) in enumerate(self.seeds):
            self.fid = self.share("seed%d" % i, addr, src)
        self.wait_holders(self.fid, seeds)

    def run(self, perf=None):
        d, daddr, ddir, out = self.downloader(settle=0.5)
        pids = [p.pid for p, _ in self.seeds]
        s0, d0 = sum(cpu(p) for p in pids), cpu(d.pid)
        w0 = [switches(p) for p in pids + [d.pid]]
        perfs = perf_start(perf, ((pids, "seeds"), ([d.pid], "dl")))
        t0 = time.monotonic()
        cli(self.b, "request-file", "--file-id", self.fid, "--peer-addr", daddr, "--data-dir", ddir, "--out", out,
            "--json")
        t = time.monotonic() - t0
        s1, d1 = sum(cpu(p) for p in pids), cpu(d.pid)
        w1 = [switches(p) for p in pids + [d.pid]]
        perf_stop(perfs)
        sw = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(w0, w1)]
        d.terminate()
        d.wait()
        assert os.path.getsize(out) == os.path.getsize(SRC)
        os.unlink(out)
        seed_sw = (sum(v for v, _ in sw[:-1]), sum(n for _, n in sw[:-1]))
        return t, s1 - s0, d1 - d0, seed_sw, sw[-1]

    def stop(self):
        super().stop(*(p for p, _ in self.seeds))


SRC = os.environ.get("SRC", "/tmp/p2pshare-ab-src1g.bin")
if __name__ == "__main__":
    bins = sys.argv[1].split(",")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    counts = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "1,4").split(",")]
    perf = os.environ.get("PERF")
    if not os.path.exists(SRC):
        subprocess.run(["head", "-c", str(1 << 30), "/dev/urandom"], stdout=open(SRC, "wb"), check=True)
    base = tempfile.mkdtemp(prefix="multi-ab-", dir="/tmp")
    setups = []
    try:
        for i, b in enumerate(bins):
            for k in counts:
                setups.append((b, k, Setup(b, "%s/%d-%d" % (base, i, k), SRC, k)))
        for r in range(runs):
            for b, k, s in setups:
                t, sc, dc, ssw, dsw = s.run("%s-%d-%d" % (perf, bins.index(b), k) if perf else None)
                print("%-40s %d seed(s) run %d: %.2f s  seeds cpu %.2f  dl cpu %.2f  switches seeds %d/%d dl %d/%d"
                      "  load %.1f" % (b[-40:], k, r + 1, t, sc, dc, ssw[0], ssw[1], dsw[0], dsw[1],
                                       os.getloadavg()[0]), flush=True)
    finally:
        for _, _, s in setups:
            s.stop()
        shutil.rmtree(base)
