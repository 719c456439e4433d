"""What the A/B scripts (single_ab.py, stream_ab.py) share: a process's CPU
from /proc, starting a server and reading the address it prints, and running
one command that must succeed."""
import os
import subprocess

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
