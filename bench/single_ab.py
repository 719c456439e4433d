#!/usr/bin/env python3
# Usage: bench/single_ab.py BIN_A,BIN_B [RUNS]   (PERF=prefix records perf data of seed and downloader)
"""Quick single-source A/B: for each binary, a central, a seed, N downloads
of a 1 GiB file with a fresh downloader each; wall time and CPU (user+sys)
of seed and downloader per run. Interleaves binaries run by run."""
import json, os, subprocess, sys, time, tempfile, shutil, signal
from ab_lib import cli, cpu, spawn
class Setup:
    def __init__(self, b, wd, src):
        self.b, self.wd = b, wd
        os.makedirs(wd)
        self.c, self.caddr = spawn([b, "central-server", "--addr", "127.0.0.1:0", "--data-dir", wd + "/c", "--log-level", "warn"], wd + "/c.log")
        self.s, self.saddr = self.peer("seed")
        time.sleep(0.5)
        out = json.loads(cli(b, "register-file", "--path", src, "--peer-addr", self.saddr, "--data-dir", wd + "/seed", "--json"))
        self.fid = out["file_id"]
        time.sleep(1.0)
        self.n = 0
    def peer(self, name):
        return spawn([self.b, "peer-server", "--central-server-addr", self.caddr, "--addr", "127.0.0.1:0", "--data-dir", self.wd + "/" + name, "--log-level", "warn"], self.wd + "/" + name + ".log")
    def run(self, perf=None):
        self.n += 1
        name = "dl%d" % self.n
        d, daddr = self.peer(name)
        time.sleep(0.5)
        out = self.wd + "/out.bin"
        os.sync()
        s0, d0 = cpu(self.s.pid), cpu(d.pid)
        perfs = []
        if perf:
            for pid, tag in ((self.s.pid, "seed"), (d.pid, "dl")):
                perfs.append(subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-p", str(pid), "-o", "%s-%s.data" % (perf, tag)], stderr=subprocess.DEVNULL))
            time.sleep(0.3)
        t0 = time.monotonic()
        cli(self.b, "request-file", "--file-id", self.fid, "--peer-addr", daddr, "--data-dir", self.wd + "/" + name, "--out", out, "--json")
        t = time.monotonic() - t0
        s1, d1 = cpu(self.s.pid), cpu(d.pid)
        for p in perfs: p.send_signal(signal.SIGINT)
        for p in perfs: p.wait()
        hwm = [l for l in open("/proc/%d/status" % d.pid) if l.startswith("VmHWM")][0].split()[1]
        d.terminate(); d.wait()
        assert os.path.getsize(out) == os.path.getsize(SRC)
        os.unlink(out)
        return t, s1 - s0, d1 - d0, int(hwm) // 1024
    def stop(self):
        for p in (self.s, self.c): p.terminate(); p.wait()
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
