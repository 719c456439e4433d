#!/usr/bin/env python3
# Usage: bench/stream_ab.py BIN_A,BIN_B [RUNS]   (SRC=path of the 1 GiB source; READER="openssl dgst -sha256")
"""request-file --stdout A/B: for each binary, a central and a seed of its
own, then per run a fresh downloader and `request-file --stdout | READER`
(the digest checked). Reports wall time, the command's own CPU (user+sys
from wait4), the downloader's CPU and the reader's. Interleaves binaries run
by run. Everything on 127.0.0.1; every process started is stopped by PID."""
import hashlib, json, os, shlex, shutil, subprocess, sys, tempfile, time

from ab_lib import cli, cpu, spawn

DEADLINE = 600  # seconds per stream


def wait_holders(b, caddr, wd, fid, n):
    end = time.monotonic() + 30
    while time.monotonic() < end:
        info = json.loads(cli(b, "file-info", "--file-id", fid, "--central-server-addr", caddr, "--data-dir",
                              wd + "/probe", "--json"))
        if len(info.get("holders", [])) >= n:
            return
        time.sleep(0.1)
    raise SystemExit("the seed never became a holder")


def reap(p, deadline):
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return ru.ru_utime + ru.ru_stime
        time.sleep(0.002)
    p.kill()
    raise SystemExit("%s not done in time" % p.args[0])


class Setup:
    def __init__(self, b, wd, src):
        self.b, self.wd = b, wd
        os.makedirs(wd)
        self.c, self.caddr = spawn([b, "central-server", "--addr", "127.0.0.1:0", "--data-dir", wd + "/c",
                                    "--log-level", "warn"], wd + "/c.log")
        self.s, self.saddr = self.peer("seed")
        self.fid = json.loads(cli(b, "register-file", "--path", src, "--peer-addr", self.saddr, "--data-dir",
                                  wd + "/seed", "--json"))["file_id"]
        wait_holders(b, self.caddr, wd, self.fid, 1)
        self.n = 0

    def peer(self, name):
        return spawn([self.b, "peer-server", "--central-server-addr", self.caddr, "--addr", "127.0.0.1:0",
                      "--data-dir", self.wd + "/" + name, "--log-level", "warn"], self.wd + "/" + name + ".log")

    def run(self, reader, digest):
        self.n += 1
        name = "dl%d" % self.n
        d, daddr = self.peer(name)
        out = self.wd + "/out.bin"
        os.sync()
        d0 = cpu(d.pid)
        t0 = time.monotonic()
        rf = subprocess.Popen([self.b, "request-file", "--file-id", self.fid, "--peer-addr", daddr, "--data-dir",
                               self.wd + "/" + name, "--out", out, "--stdout"], stdout=subprocess.PIPE,
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
        for p in (self.s, self.c):
            p.terminate()
            p.wait(timeout=30)


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
