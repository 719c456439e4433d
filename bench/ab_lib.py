"""What the A/B scripts (single_ab.py, multi_ab.py, stream_ab.py) share: a
process's CPU from /proc, starting a server and reading the address it
prints, running one command that must succeed, a central server with its
peer-servers (Network), and perf recordings of running processes."""
import json
import os
import signal
import subprocess
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """User + system CPU seconds of a running process."""
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def spawn(argv, log):
    """Starts a server that prints `listening on ADDR` first; returns (process, ADDR)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "wb"), stdin=subprocess.DEVNULL)
    line = p.stdout.readline().decode()
    assert line.startswith("listening on"), (argv, line)
    return p, line.split()[-1]


def cli(b, *a):
    """Runs `b a...` (5 minutes at most); its stdout, or exits naming the command."""
    r = subprocess.run([b, *a], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    if r.returncode:
        raise SystemExit("%s failed: %s" % (a[0], r.stderr))
    return r.stdout


class Network:
    """A central server of binary `b` in directory `wd`, and the
    peer-servers started on it; everything on 127.0.0.1, each stopped by its
    own process handle."""

    def __init__(self, b, wd):
        self.b, self.wd = b, wd
        os.makedirs(wd)
        self.c, self.caddr = spawn([b, "central-server", "--addr", "127.0.0.1:0", "--data-dir", wd + "/c",
                                    "--log-level", "warn"], wd + "/c.log")
        self.n = 0

    def peer(self, name):
        """A peer-server with its data in wd/name: (process, ADDR)."""
        return spawn([self.b, "peer-server", "--central-server-addr", self.caddr, "--addr", "127.0.0.1:0",
                      "--data-dir", self.wd + "/" + name, "--log-level", "warn"], self.wd + "/" + name + ".log")

    def share(self, name, addr, src):
        """Registers src on the peer-server `name` at addr; the file id."""
        return json.loads(cli(self.b, "register-file", "--path", src, "--peer-addr", addr, "--data-dir",
                              self.wd + "/" + name, "--json"))["file_id"]

    def wait_holders(self, fid, n, timeout=30):
        """Until the central server lists at least n holders of fid."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = subprocess.run([self.b, "file-info", "--file-id", fid, "--central-server-addr", self.caddr,
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               timeout=30)
            if r.returncode == 0 and len(json.loads(r.stdout).get("holders", [])) >= n:
                return
            time.sleep(0.1)
        raise SystemExit("the central server never listed %d holders of %s" % (n, fid))

    def downloader(self, settle=0.0):
        """A fresh peer-server to download into, after `settle` seconds and a
        sync: (process, ADDR, its data dir, the output path)."""
        self.n += 1
        name = "dl%d" % self.n
        d, daddr = self.peer(name)
        time.sleep(settle)
        os.sync()
        return d, daddr, self.wd + "/" + name, self.wd + "/out.bin"

    def stop(self, *more):
        """Stops the processes in `more`, then the central server."""
        for p in (*more, self.c):
            p.terminate()
            p.wait(timeout=30)


def perf_start(prefix, targets):
    """perf record (call graphs, 1999 Hz) of each (pids, tag) in targets into
    prefix-tag.data; the recorders, to pass to perf_stop."""
    recorders = []
    if prefix:
        for pids, tag in targets:
            recorders.append(subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-p",
                                               ",".join(map(str, pids)), "-o", "%s-%s.data" % (prefix, tag)],
                                              stderr=subprocess.DEVNULL))
        time.sleep(0.3)
    return recorders


def perf_stop(recorders):
    for p in recorders:
        p.send_signal(signal.SIGINT)
    for p in recorders:
        p.wait()
