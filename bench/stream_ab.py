#!/usr/bin/env python3
# Usage: bench/stream_ab.py BIN_A,BIN_B [RUNS]   (SRC=path of the 1 GiB source; READER="openssl dgst -sha256")
"""request-file --stdout A/B: for each binary, a central and a seed of its
own, then per run a fresh downloader and `request-file --stdout | READER`
(the digest checked). Reports wall time, the command's own CPU (user+sys
from wait4), the downloader's CPU and the reader's. Interleaves binaries run
by run. Everything on 127.0.0.1; every process started is stopped by PID."""
import hashlib, os, shlex, shutil, subprocess, sys, tempfile, time

from ab_lib import Network, cpu

DEADLINE = 600  # seconds per stream


def reap(p, deadline):
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        time.sleep(0.002)
    p.kill()
    raise SystemExit("%s not done in time" % p.args[0])


class Setup(Network):
    def __init__(self, b, wd, src):
        super().__init__(b, wd)
        self.s, self.saddr = self.peer("seed")
        self.fid = self.share("seed", self.saddr, src)
        self.wait_holders(self.fid, 1)

    def run(self, reader, digest):
        d, daddr, ddir, out = self.downloader()
        d0 = cpu(d.pid)
        t0 = time.monotonic()
        rf = subprocess.Popen([self.b, "request-file", "--file-id", self.fid, "--peer-addr", daddr, "--data-dir", ddir,
                               "--out", out, "--stdout"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        rd = subprocess.Popen(reader, stdin=rf.stdout, stdout=subprocess.PIPE)
        rf.stdout.close()
        deadline = t0 + DEADLINE
        cmd_cpu = reap(rf, deadline)
        rd_cpu = reap(rd, deadline)
        t = time.monotonic() - t0
        dl_cpu = cpu(d.pid) - d0
        err = rf.stderr.read().decode(errors="replace").strip()
        words = rd.stdout.read().decode().split()
        d.terminate()
        d.wait(timeout=30)
        if rf.returncode != 0:
            raise SystemExit("request-file failed (%d): %s" % (rf.returncode, err))
        if digest not in words:
            raise SystemExit("the bytes on stdout do not hash to the file's digest")
        os.unlink(out)
        return t, cmd_cpu, dl_cpu, rd_cpu

    def stop(self):
        super().stop(self.s)


SRC = os.environ.get("SRC", "/tmp/p2pshare-ab-src1g.bin")
if __name__ == "__main__":
    bins = sys.argv[1].split(",")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    reader = shlex.split(os.environ.get("READER", "openssl dgst -sha256"))
    if not os.path.exists(SRC):
        subprocess.run(["head", "-c", str(1 << 30), "/dev/urandom"], stdout=open(SRC, "wb"), check=True)
    h = hashlib.sha256()
    with open(SRC, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    base = tempfile.mkdtemp(prefix="stream-ab-", dir="/tmp")
    setups = []
    try:
        for i, b in enumerate(bins):
            setups.append(Setup(b, "%s/%d" % (base, i), SRC))
        for r in range(runs):
            for b, s in zip(bins, setups):
                load = os.getloadavg()[0]
                t, cc, dc, rc = s.run(reader, digest)
                print("%-40s run %d: %.2f s  request-file cpu %.2f  downloader cpu %.2f  reader cpu %.2f  load %.1f"
                      % (b[-40:], r + 1, t, cc, dc, rc, load), flush=True)
    finally:
        for s in setups:
            s.stop()
        shutil.rmtree(base)
