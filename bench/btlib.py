"""Shared pieces of the libtorrent-based baselines (lt_transfer.py,
aria2_transfer.py). Stdlib + Debian's python3-libtorrent only; run the
scripts with /usr/bin/python3, which is the interpreter that has the binding.

Results are printed as `key=value` lines on stdout, like the shell baselines
(see lib.sh), diagnostics go to stderr.
"""

import hashlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def log(*args):
    print("[%s]" % os.path.basename(sys.argv[0]), *args, file=sys.stderr,
          flush=True)


def result(key, value):
    if isinstance(value, float):
        value = "%.6f" % value
    print("%s=%s" % (key, value), flush=True)


def install_if_missing(*pkgs):
    """Same contract as lib.sh's install_if_missing: apt only what's absent."""
    missing = [p for p in pkgs
               if subprocess.run(["dpkg", "-s", p], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL).returncode != 0]
    if not missing:
        return
    log("installing:", *missing)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True,
                   stdout=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq",
                    "--no-install-recommends", *missing], check=True,
                   env=env, stdout=sys.stderr)


def _import_libtorrent():
    try:
        import libtorrent
        return libtorrent
    except ImportError:
        pass
    # Only Debian's interpreter can see python3-libtorrent; installing it
    # would not help a pyenv/venv python.
    if not os.path.realpath(sys.executable).startswith("/usr/bin/python3"):
        sys.exit("libtorrent binding missing: run with /usr/bin/python3")
    install_if_missing("python3-libtorrent")
    import libtorrent
    return libtorrent


lt = _import_libtorrent()


def parse_size(s):
    """16M / 1G / 256MiB / 12345 -> bytes (binary multiples)."""
    s = s.strip()
    for suffix in ("iB", "B"):
        if s.endswith(suffix):
            s = s[:-len(suffix)]
            break
    mult = {"k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s and s[-1] in mult:
        return int(s[:-1]) * mult[s[-1]]
    return int(s)


def make_file(path, size):
    """Incompressible data, fast: AES-CTR of zeros under a random key (the
    same generator as lib.sh's make_file)."""
    key, iv = os.urandom(16).hex(), os.urandom(16).hex()
    with open(path, "wb") as out:
        head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"],
                                stdout=subprocess.PIPE)
        enc = subprocess.run(["openssl", "enc", "-aes-128-ctr", "-nosalt",
                              "-K", key, "-iv", iv], stdin=head.stdout,
                             stdout=out, check=True)
        head.stdout.close()
        head.wait()
    assert enc.returncode == 0 and os.path.getsize(path) == size


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def warm_cache(path):
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def vm_hwm_kib(pid="self"):
    """Peak resident set (VmHWM) of a process, in KiB; None once it's gone.

    Not getrusage()/wait4() ru_maxrss: on exec the kernel folds the *old*
    address space's peak into it, and a child vfork()ed from this process
    (which maps a 1 GiB seed file) would report our RSS, not its own."""
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


class HwmSampler(threading.Thread):
    """Follow a child's VmHWM until it exits. VmHWM only grows, so polling
    it every 10 ms misses at most the child's last 10 ms."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak = pid, 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            v = vm_hwm_kib(self.pid)
            if v is None:
                return
            self.peak = max(self.peak, v)
            time.sleep(0.01)

    def stop(self):
        self._halt.set()
        self.join(timeout=1)
        return self.peak


class Workdir:
    """Scratch directory + children to reap. Used as a context manager so a
    crash or Ctrl-C still kills exactly the processes we started (by PID)
    and removes the data."""

    def __init__(self):
        parent = os.environ.get("BENCH_TMPDIR") or None
        self.path = tempfile.mkdtemp(prefix="p2pbench.", dir=parent)
        self.children = []

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.children.append(p)
        return p

    def __enter__(self):
        # SIGTERM (e.g. from `timeout`) would kill us without unwinding;
        # turn it into SystemExit so __exit__ still reaps and cleans up.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, *exc):
        for p in self.children:
            if p.poll() is None:
                p.terminate()
        for p in self.children:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def make_torrent(data_path, torrent_path, piece_size=0):
    """v1-only .torrent without trackers: aria2 (and most non-libtorrent
    clients) don't speak BitTorrent v2, and peers are wired up by hand, so no
    announce URL is needed. piece_size 0 lets libtorrent pick."""
    fs = lt.file_storage()
    lt.add_files(fs, data_path)
    ct = lt.create_torrent(fs, piece_size, lt.create_torrent.v1_only)
    ct.set_creator("p2pshare bench")
    lt.set_piece_hashes(ct, os.path.dirname(data_path))
    with open(torrent_path, "wb") as f:
        f.write(lt.bencode(ct.generate()))
    return ct.piece_length()


def settings(upload_limit=0, utp=False):
    """A loopback-only session with every discovery mechanism off, so the
    only peers are the ones we connect explicitly."""
    s = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Every peer is 127.0.0.1: without this libtorrent keeps one
        # connection per IP and the swarm collapses to a single link.
        "allow_multiple_connections_per_ip": True,
        # uTP over loopback is CPU-bound and much slower than TCP; a bulk
        # transfer client on a LAN would use TCP. --utp turns it back on.
        "enable_incoming_utp": utp,
        "enable_outgoing_utp": utp,
        "upload_rate_limit": upload_limit,
        # Count protocol overhead against the limit (libtorrent's default,
        # stated so the semantics of --upload-limit are explicit).
        "rate_limit_ip_overhead": True,
        "alert_mask": lt.alert_category.status | lt.alert_category.error
        | lt.alert_category.storage,
    }
    return s


def new_session(upload_limit=0, utp=False):
    ses = lt.session(settings(upload_limit, utp))
    # libtorrent 2.x puts peers from 127/8, 10/8, 192.168/16, ... into the
    # "local" peer class, which has no rate limit, *instead of* the global
    # class that upload_rate_limit applies to (the old
    # ignore_limits_on_local_network setting is gone). Map every address to
    # the global class so a limit means the same on loopback as on the
    # internet.
    f = lt.ip_filter()
    glob = 1 << lt.session.global_peer_class_id
    f.add_rule("0.0.0.0", "255.255.255.255", glob)
    f.add_rule("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", glob)
    ses.set_peer_class_filter(f)
    return ses


def free_port():
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen_port(ses, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = ses.listen_port()
        if port:
            return port
        time.sleep(0.01)
    raise RuntimeError("libtorrent session did not start listening")


def check_alerts(ses):
    """Pop alerts; raise on torrent/file errors. Returns the alert list."""
    alerts = ses.pop_alerts()
    for a in alerts:
        if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
            raise RuntimeError("libtorrent: %s" % a.message())
    return alerts


def add_torrent(ses, torrent_path, save_path):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent_path)
    atp.save_path = save_path
    return ses.add_torrent(atp)


def wait_finished(ses, h, timeout):
    """Block until h has all pieces (torrent_finished_alert, with a status
    poll as a fallback). Returns time.monotonic() at detection."""
    deadline = time.monotonic() + timeout
    last_poll = 0.0
    while True:
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError("torrent not finished after %ss" % timeout)
        ses.wait_for_alert(50)
        for a in check_alerts(ses):
            if isinstance(a, lt.torrent_finished_alert):
                return time.monotonic()
        if now - last_poll > 0.5:
            last_poll = now
            if h.status().is_finished:
                return time.monotonic()


def start_seed(workdir, size, upload_limit=0, utp=False, piece_size=0,
               timeout=600):
    """Create SIZE bytes of data + its .torrent and start a libtorrent seed
    for it, in this process. Returns (session, handle, port, data_path,
    torrent_path, sha256, piece_length)."""
    seed_dir = os.path.join(workdir, "seed")
    os.mkdir(seed_dir)
    data = os.path.join(seed_dir, "data.bin")
    torrent = os.path.join(workdir, "data.torrent")
    log("creating %d-byte test file and torrent" % size)
    make_file(data, size)
    digest = sha256_file(data)
    plen = make_torrent(data, torrent, piece_size)
    ses = new_session(upload_limit, utp)
    port = wait_listen_port(ses)
    h = add_torrent(ses, torrent, seed_dir)
    # The seed hashes its copy on add; wait for that to end so the timed
    # section measures the transfer, not the seed's startup check.
    deadline = time.monotonic() + timeout
    while not h.status().is_seeding:
        if time.monotonic() > deadline:
            raise TimeoutError("seed did not finish checking")
        ses.wait_for_alert(50)
        check_alerts(ses)
    warm_cache(data)
    log("seed ready on 127.0.0.1:%d (piece size %d KiB)" % (port, plen >> 10))
    return ses, h, port, data, torrent, digest, plen


class LineReader:
    """Line-oriented reads from several child pipes with one deadline, so no
    wait on a child can hang the benchmark."""

    def __init__(self):
        self.buf = {}

    def readline(self, pipe, deadline):
        fd = pipe.fileno()
        buf = self.buf.setdefault(fd, b"")
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("child did not answer in time")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError("child exited early")
                buf += chunk
        line, buf = buf.split(b"\n", 1)
        self.buf[fd] = buf
        return line.decode()
