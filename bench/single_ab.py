#!/usr/bin/env python3
# Usage: bench/single_ab.py BIN_A,BIN_B [RUNS]   (PERF=prefix records perf data of seed and downloader)
"""Quick single-source A/B: for each binary, a central, a seed, N downloads
of a 1 GiB file with a fresh downloader each; wall time and CPU (user+sys)
of seed and downloader per run. Interleaves binaries run by run."""
import os, subprocess, sys, time, tempfile, shutil
from ab_lib import Network, cli, cpu, perf_start, perf_stop
class Setup(Network):
    def __init__(self, b, wd, src):
        super().__init__(b, wd)
        self.s, self.saddr = self.peer("seed")
        time.sleep(0.5)
        self.fid = self.share("seed", self.saddr, src)
        self.wait_holders(self.fid, 1)
    def run(self, perf=None):
        d, daddr, ddir, out = self.downloader(settle=0.5)
        s0, d0 = cpu(self.s.pid), cpu(d.pid)
        perfs = perf_start(perf, (([self.s.pid], "seed"), ([d.pid], "dl")))
        t0 = time.monotonic()
        cli(self.b, "request-file", "--file-id", self.fid, "--peer-addr", daddr, "--data-dir", ddir, "--out", out, "--json")
        t = time.monotonic() - t0
        s1, d1 = cpu(self.s.pid), cpu(d.pid)
        perf_stop(perfs)
        hwm = [l for l in open("/proc/%d/status" % d.pid) if l.startswith("VmHWM")][0].split()[1]
        d.terminate(); d.wait()
        assert os.path.getsize(out) == os.path.getsize(SRC)
        os.unlink(out)
        return t, s1 - s0, d1 - d0, int(hwm) // 1024
    def stop(self):
        super().stop(self.s)
SRC = os.environ.get("SRC", "/tmp/p2pshare-ab-src1g.bin")
if __name__ == "__main__":
    bins = sys.argv[1].split(",")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    perf = os.environ.get("PERF")
    if not os.path.exists(SRC):
        subprocess.run(["head", "-c", str(1 << 30), "/dev/urandom"], stdout=open(SRC, "wb"), check=True)
    base = tempfile.mkdtemp(prefix="ab-", dir="/tmp")
    setups = [Setup(b, "%s/%d" % (base, i), SRC) for i, b in enumerate(bins)]
    try:
        for r in range(runs):
            for b, s in zip(bins, setups):
                t, sc, dc, hwm = s.run(perf + "-%d" % bins.index(b) if perf else None)
                print("%-45s run %d: %.2f s  seed cpu %.2f  dl cpu %.2f  dl hwm %d MiB  load %.1f" % (b[-45:], r + 1, t, sc, dc, hwm, os.getloadavg()[0]), flush=True)
    finally:
        for s in setups: s.stop()
        shutil.rmtree(base)
