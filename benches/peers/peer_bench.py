#!/usr/bin/env python3
"""Peer side of `kvtier bench pool`: put/get throughput and latency of a real peer store.

Starts the peer's server process(es) itself on 127.0.0.1 (free ports), puts COUNT objects of SIZE
bytes (distinct keys, pseudo-random but deterministic content), gets all of them back, checks every
byte, stops the servers, and prints one JSON line on stdout. Progress goes to stderr.

    python3 benches/peers/peer_bench.py --system {mooncake,lmcache,redis} \
        --size 4194304 --count 256 --concurrency 1 --json

Interpreter: each peer has its own venv, made by scripts/setup_peers.sh, at
    ${KVTIER_CACHE_DIR:-/var/cache/kvtier}/peers/<system>/bin/python
The canonical call is that python running this file. Any other python3 works too: the script
re-executes itself under the peer's venv python when it exists (set KVTIER_PEER_NO_REEXEC=1 to stop
that). Exit codes: 0 ran and every byte verified; 2 ran but some objects failed or mismatched (the
JSON line is still printed); 3 peer not installed (run scripts/setup_peers.sh); 1 other errors
(server did not start, ...).

How each peer is driven (same values as shared/BENCHMARKS.md, "Peers measured on the same machine"):
  mooncake  mooncake_master (HTTP metadata server, --default_kv_lease_ttl=2000) + a storage process
            mooncake_client (--global_segment_size "3 GB", or more if COUNT*SIZE needs it, tcp);
            Python MooncakeDistributedStore.setup(host, metadata, 0, 512 MiB, "tcp", "", master),
            zero-copy put_from/get_into on buffers registered with register_buffer. The client is
            thread-safe: C threads issue requests at once.
  lmcache   `lmcache_server 127.0.0.1 PORT cpu`; the client is LMCache's own lm:// remote connector
            (lmcache.v1.storage_backend.connector.lm_connector.LMCServerConnector) with a real
            LocalCPUBackend, driven like LMCache's RemoteBackend does (coroutines on an event loop).
            One connector owns one socket and serialises its requests with a lock, so concurrency C
            means C connectors (C sockets), one per thread; object i always uses connector i % C.
            An lm:// PUT has no reply, so the put phase ends with one EXIST per socket (answered
            only once the server stored everything sent before it): put_gbps includes that,
            put_send_gbps (extra field) does not; per-op put latency is the send alone.
  redis     redis-server --bind 127.0.0.1 --port PORT --save "" --appendonly no; redis-py with the
            hiredis parser, SET/GET; one client, a connection pool of C connections, C threads.

Throughput is bytes / wall time of the phase, in GB/s (1e9 bytes per second). Latency is per
operation as seen by the caller (p50/p99, nearest rank, microseconds). Verification is kept out of
the timings: the read-back buffers are kept and compared after the get phase (when COUNT*SIZE is
above --max-hold-bytes they are compared right after each op instead, outside the op's timer but
inside the phase's wall time; the JSON field "verify" says which).
"""

import argparse
import asyncio
import atexit
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SYSTEMS = ("mooncake", "lmcache", "redis")
CACHE = os.environ.get("KVTIER_CACHE_DIR", "/var/cache/kvtier")
SETUP_HINT = "run scripts/setup_peers.sh (it installs all three peers under %s/peers)" % CACHE
EXIT_MISMATCH, EXIT_NOT_INSTALLED = 2, 3


def log(msg):
    print("peer_bench: %s" % msg, file=sys.stderr, flush=True)


class NotInstalled(Exception):
    pass


class PeerError(Exception):
    pass


def venv_dir(system):
    return os.path.join(CACHE, "peers", system)


def maybe_reexec(system):
    """Run under the peer's venv python when this is another interpreter."""
    if os.environ.get("KVTIER_PEER_NO_REEXEC") == "1":
        return
    vdir = venv_dir(system)
    py = os.path.join(vdir, "bin", "python")
    if not os.path.exists(py):
        return  # the import checks below say what is missing
    if os.path.realpath(sys.prefix) == os.path.realpath(vdir):
        return
    os.environ["KVTIER_PEER_NO_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


# ---------------------------------------------------------------- processes and ports

_procs = []  # (name, Popen, logpath)


def _pdeathsig():
    # The server dies with this script even if the script is SIGKILLed (prctl PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def start_proc(name, argv, workdir, env=None):
    logpath = os.path.join(workdir, name + ".log")
    logf = open(logpath, "wb")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    log("starting %s: %s" % (name, " ".join(argv)))
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                             cwd=workdir, env=full_env, start_new_session=True,
                             preexec_fn=_pdeathsig)
    except FileNotFoundError as e:
        raise NotInstalled("%s: %s" % (name, e))
    finally:
        logf.close()
    _procs.append((name, p, logpath))
    return p


def stop_all():
    while _procs:
        name, p, _ = _procs.pop()
        if p.poll() is not None:
            continue
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)  # its own session/process group: children go too
            except ProcessLookupError:
                break
            try:
                p.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log("stopped %s (pid %d)" % (name, p.pid))


def log_tail(logpath, n=30):
    try:
        with open(logpath, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def check_alive(name, p, logpath):
    if p.poll() is not None:
        raise PeerError("%s exited with code %s; last log lines:\n%s"
                        % (name, p.returncode, log_tail(logpath)))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(desc, probe, deadline, procs=()):
    """Poll probe() (True when ready) until the deadline; fail early if a process died."""
    delay = 0.01
    last = None
    while True:
        for name, p, logpath in procs:
            check_alive(name, p, logpath)
        try:
            if probe():
                return
        except Exception as e:  # noqa: BLE001 - keep the last reason for the message
            last = e
        if time.monotonic() > deadline:
            raise PeerError("timed out waiting for %s%s" % (desc, (": %s" % last) if last else ""))
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def port_open(port):
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


# ---------------------------------------------------------------- payloads

class Payloads:
    """Object i = one of 16 random bases rotated by a per-object offset, with a 16-byte header
    (seed, index) at the front and the back: distinct and deterministic, cheap to regenerate."""

    NBASES = 16

    def __init__(self, size, seed):
        self.size = size
        self.seed = seed
        self.bases = [random.Random("kvtier-peer:%d:%d" % (seed, b)).randbytes(size)
                      for b in range(min(self.NBASES, 1 << 30))]

    def key(self, i):
        return "kvtier-bench-%d-%08d" % (self.seed, i)

    def get(self, i):
        base = self.bases[i % len(self.bases)]
        off = (i * 7919 + 13) % self.size if self.size else 0
        b = bytearray(base[off:] + base[:off])
        tag = (b"%08x%08x" % (self.seed & 0xFFFFFFFF, i & 0xFFFFFFFF))[: self.size]
        b[: len(tag)] = tag
        if self.size >= 2 * len(tag):
            b[-len(tag):] = tag
        return bytes(b)


# ---------------------------------------------------------------- stats

def pct(sorted_vals, q):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-q * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def run_phase(name, count, concurrency, op, static=False, after=None):
    """op(wid, i) for i in range(count) on `concurrency` threads, each timed; raises on failure.
    static: thread w does i = w, w+C, ... (else threads take the next i). after(): run at the end,
    inside the wall time. Returns (wall_s, latencies_us, errors dict i->str)."""
    lat = [None] * count
    errors = {}
    nxt = [0]
    lock = threading.Lock()

    def indices(wid):
        if static:
            yield from range(wid, count, concurrency)
            return
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= count:
                return
            yield i

    def worker(wid):
        for i in indices(wid):
            t0 = time.perf_counter()
            try:
                op(wid, i)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                errors[i] = "%s: %s" % (type(e).__name__, e)
            lat[i] = (time.perf_counter() - t0) * 1e6

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if after is not None:
        after()
    wall = time.perf_counter() - t0
    if errors:
        first = sorted(errors.items())[:3]
        log("%s: %d of %d ops failed, e.g. %s" % (name, len(errors), count, first))
    return wall, [x for x in lat if x is not None], errors


# ---------------------------------------------------------------- peers

class Redis:
    name = "redis"
    thread_safe = True

    def __init__(self, args, workdir):
        try:
            import redis  # noqa: F401
        except ImportError as e:
            raise NotInstalled("redis-py is not importable in %s (%s)" % (sys.executable, e))
        self.args = args
        self.workdir = workdir
        exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if not exe:
            raise NotInstalled("redis-server not found on PATH (Debian package redis-server)")
        self.exe = exe

    def version(self):
        import redis
        out = subprocess.run([self.exe, "--version"], capture_output=True, text=True).stdout
        srv = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "?")
        try:
            import hiredis
            hv = hiredis.__version__
        except Exception:  # noqa: BLE001
            hv = "absent"
        return "redis-server %s, redis-py %s, hiredis %s" % (srv, redis.__version__, hv)

    def start(self, deadline):
        import redis
        port = free_port()
        p = start_proc("redis-server", [self.exe, "--bind", "127.0.0.1", "--port", str(port),
                                        "--save", "", "--appendonly", "no", "--dir", self.workdir,
                                        "--daemonize", "no"], self.workdir)
        pool = redis.ConnectionPool(host="127.0.0.1", port=port,
                                    max_connections=max(1, self.args.concurrency) + 1)
        self.r = redis.Redis(connection_pool=pool)
        wait_until("redis-server on port %d" % port, lambda: self.r.ping(), deadline,
                   [_procs[-1]])
        try:
            from redis.utils import HIREDIS_AVAILABLE
        except ImportError:
            HIREDIS_AVAILABLE = False
        if not HIREDIS_AVAILABLE:
            log("warning: hiredis parser not available; redis-py uses its pure-Python parser")
        del p

    def prepare(self, payloads, count, hold):
        self.payloads = payloads
        self.data = [payloads.get(i) for i in range(count)]
        self.got = [None] * count if hold else None

    def put(self, wid, i):
        if not self.r.set(self.payloads.key(i), self.data[i]):
            raise PeerError("SET returned false")

    def get(self, wid, i):
        v = self.r.get(self.payloads.key(i))
        if v is None:
            raise PeerError("GET: no such key")
        return v

    def close(self):
        try:
            self.r.close()
        except Exception:  # noqa: BLE001
            pass


class Mooncake:
    name = "mooncake"
    thread_safe = True

    def __init__(self, args, workdir):
        try:
            from mooncake.store import MooncakeDistributedStore  # noqa: F401
        except ImportError as e:
            raise NotInstalled("mooncake (pip mooncake-transfer-engine-non-cuda) is not "
                               "importable in %s (%s)" % (sys.executable, e))
        self.args = args
        self.workdir = workdir
        bindir = os.path.dirname(sys.executable)
        self.master = shutil.which("mooncake_master", path=bindir) or shutil.which("mooncake_master")
        self.client = shutil.which("mooncake_client", path=bindir) or shutil.which("mooncake_client")
        if not self.master or not self.client:
            raise NotInstalled("mooncake_master / mooncake_client not found next to %s"
                               % sys.executable)
        self.store = None
        self.bufs = []

    def version(self):
        from importlib.metadata import version
        return "mooncake-transfer-engine-non-cuda %s" % version("mooncake-transfer-engine-non-cuda")

    def start(self, deadline):
        from mooncake.store import MooncakeDistributedStore
        a = self.args
        rpc, http, metrics, cport = free_port(), free_port(), free_port(), free_port()
        env = {"MC_TCP_BIND_ADDRESS": "127.0.0.1"}
        start_proc("mooncake_master", [
            self.master, "--rpc_port=%d" % rpc, "--rpc_address=127.0.0.1",
            "--enable_http_metadata_server=true", "--http_metadata_server_host=127.0.0.1",
            "--http_metadata_server_port=%d" % http, "--default_kv_lease_ttl=%d" % a.lease_ttl_ms,
            "--metrics_host=127.0.0.1", "--metrics_port=%d" % metrics,
            "--logtostderr"], self.workdir, env)
        master = _procs[-1]
        wait_until("mooncake_master rpc port %d" % rpc, lambda: port_open(rpc), deadline, [master])
        wait_until("mooncake metadata port %d" % http, lambda: port_open(http), deadline, [master])
        # The storage process holds the data; the bench client contributes no memory (segment 0).
        need = int(a.count * a.size * 1.25) + (64 << 20)
        seg = "3 GB" if need <= 3 * 1000**3 else "%d MB" % (-(-need // 1000**2))
        seg = a.mooncake_segment or seg
        self.segment = seg
        meta = "http://127.0.0.1:%d/metadata" % http
        start_proc("mooncake_client", [
            self.client, "--host=127.0.0.1", "--global_segment_size=%s" % seg,
            "--protocol=tcp", "--master_server_address=127.0.0.1:%d" % rpc,
            "--metadata_server=%s" % meta, "--port=%d" % cport, "--logtostderr"],
            self.workdir, env)
        storage = _procs[-1]
        wait_until("mooncake_client port %d" % cport, lambda: port_open(cport), deadline,
                   [master, storage])
        os.environ["MC_TCP_BIND_ADDRESS"] = "127.0.0.1"
        self.store = MooncakeDistributedStore()
        rc = self.store.setup("127.0.0.1", meta, 0, 512 << 20, "tcp", "", "127.0.0.1:%d" % rpc)
        if rc != 0:
            raise PeerError("MooncakeDistributedStore.setup returned %d" % rc)

        # Ready when a put lands (the storage segment is mounted at the master).
        probe = b"kvtier-probe"

        def probe_put():
            return self.store.put("kvtier-probe-%d" % os.getpid(), probe) == 0

        wait_until("mooncake storage segment (probe put)", probe_put, deadline, [master, storage])
        self.store.remove("kvtier-probe-%d" % os.getpid())

    def _buf(self, nbytes):
        buf = ctypes.create_string_buffer(max(1, nbytes))  # zeroed, so pages are touched
        ptr = ctypes.addressof(buf)
        rc = self.store.register_buffer(ptr, max(1, nbytes))
        if rc != 0:
            raise PeerError("register_buffer(%d bytes) returned %d" % (nbytes, rc))
        self.bufs.append((buf, ptr))
        return buf, ptr

    def prepare(self, payloads, count, hold):
        size = self.args.size
        self.payloads = payloads
        self.size = size
        self.src, self.src_ptr = self._buf(count * size)
        for i in range(count):
            ctypes.memmove(self.src_ptr + i * size, payloads.get(i), size)
        self.hold = hold
        if hold:  # one destination slot per object, compared after the phase
            self.dst, self.dst_ptr = self._buf(count * size)
        else:  # one slot per thread
            self.dst, self.dst_ptr = self._buf(self.args.concurrency * size)

    def put(self, wid, i):
        rc = self.store.put_from(self.payloads.key(i), self.src_ptr + i * self.size, self.size)
        if rc != 0:
            raise PeerError("put_from returned %d" % rc)

    def get(self, wid, i):
        slot = i if self.hold else wid
        ptr = self.dst_ptr + slot * self.size
        n = self.store.get_into(self.payloads.key(i), ptr, self.size)
        if n < 0:
            raise PeerError("get_into returned %d" % n)
        if n != self.size:
            raise PeerError("get_into returned %d bytes, expected %d" % (n, self.size))
        return ctypes.string_at(ptr, self.size) if not self.hold else None

    def held(self, i):
        return ctypes.string_at(self.dst_ptr + i * self.size, self.size)

    def close(self):
        if self.store is not None:
            for _, ptr in self.bufs:
                try:
                    self.store.unregister_buffer(ptr)
                except Exception:  # noqa: BLE001
                    pass
            try:
                self.store.close()
            except Exception:  # noqa: BLE001
                pass


class LMCache:
    name = "lmcache"
    thread_safe = True  # one connector (socket) per thread, see module docstring
    # Object i always goes through connector i % C, so its GET follows its PUT on the same socket.
    static_partition = True

    def __init__(self, args, workdir):
        try:
            import lmcache  # noqa: F401
            from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector  # noqa
        except ImportError as e:
            raise NotInstalled("lmcache is not importable in %s (%s)" % (sys.executable, e))
        self.args = args
        self.workdir = workdir
        bindir = os.path.dirname(sys.executable)
        self.server = shutil.which("lmcache_server", path=bindir) or shutil.which("lmcache_server")
        if not self.server:
            raise NotInstalled("lmcache_server not found next to %s" % sys.executable)
        self.conns = []

    def version(self):
        from importlib.metadata import version
        import torch
        return "lmcache %s (torch %s)" % (version("lmcache"), torch.__version__)

    def start(self, deadline):
        port = free_port()
        start_proc("lmcache_server", [self.server, "127.0.0.1", str(port), "cpu"], self.workdir)
        srv = _procs[-1]
        wait_until("lmcache_server port %d" % port, lambda: port_open(port), deadline, [srv])
        self.port = port

    def _engine(self, count, hold):
        import torch
        from lmcache.utils import CacheEngineKey
        from lmcache.v1.config import LMCacheEngineConfig
        from lmcache.v1.metadata import LMCacheMetadata
        from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend

        size = self.args.size
        if size % 2:
            raise PeerError("lmcache: --size must be even (a KV chunk is K and V halves)")
        # One object = one LMCache KV chunk of uint8: kv_shape (layers, 2, tokens, heads, head_size)
        half = size // 2
        tokens = next(t for t in (256, 128, 64, 32, 16, 8, 4, 2, 1) if half % t == 0)
        kv_shape = (1, 2, tokens, 1, half // tokens)
        # Room in the local CPU buffer for what is held at once (put sources, then read-back
        # objects), plus slack.
        held = (count if hold else self.args.concurrency) + self.args.concurrency + 4
        gb = max(0.5, held * size * 1.1 / (1 << 30))
        config = LMCacheEngineConfig.from_defaults(
            chunk_size=tokens, local_cpu=False, max_local_cpu_size=gb,
            remote_url="lm://127.0.0.1:%d" % self.port, remote_serde="naive",
            lmcache_instance_id="kvtier-peer-bench")
        meta = LMCacheMetadata(model_name="kvtier-bench", world_size=1, local_world_size=1,
                               worker_id=0, local_worker_id=0, kv_dtype=torch.uint8,
                               kv_shape=kv_shape, chunk_size=tokens)
        self.backend = LocalCPUBackend(config, meta, dst_device="cpu")
        self.torch = torch
        self.shape = torch.Size([2, 1, tokens, half // tokens])  # KV_2LTD chunk
        self.dtype = torch.uint8
        self.CacheEngineKey = CacheEngineKey
        self.config, self.meta = config, meta

    def _key(self, i):
        # What LMCache's engine builds for a chunk (model@world_size@worker_id@chunk_hash@dtype).
        return self.CacheEngineKey(model_name="kvtier-bench", world_size=1, worker_id=0,
                                   chunk_hash=self.payloads_seed_base + i, dtype=self.torch.uint8)

    def prepare(self, payloads, count, hold):
        from lmcache.v1.memory_management import MemoryFormat
        from lmcache.v1.storage_backend.connector.lm_connector import LMCServerConnector
        self._engine(count, hold)
        self.payloads = payloads
        self.payloads_seed_base = (payloads.seed & 0xFFFF) << 32
        self.keys = [self._key(i) for i in range(count)]
        # Put sources: MemoryObjs from LMCache's own allocator (LocalCPUBackend), filled with the
        # payloads before the put phase, as the engine has them once it copied the KV out (like
        # Mooncake's registered buffer and Redis's bytes). Released after the put phase. When
        # COUNT*SIZE is above --max-hold-bytes, each put allocates and fills its object instead
        # (inside the op timing).
        self.fmt = MemoryFormat.KV_2LTD
        self.hold = hold
        if hold:
            self.src = []
            for i in range(count):
                obj = self._alloc()
                memoryview(obj.byte_array).cast("B")[:] = payloads.get(i)
                self.src.append(obj)
        self.loops = []
        for _ in range(self.args.concurrency):
            loop = asyncio.new_event_loop()
            conn = LMCServerConnector("127.0.0.1", self.port, loop, self.backend)
            self.loops.append(loop)
            self.conns.append(conn)
        self.got = [None] * count if hold else None

    def _alloc(self):
        obj = self.backend.allocate(self.shape, self.dtype, self.fmt)
        if obj is None:
            raise PeerError("LocalCPUBackend.allocate returned None (buffer full)")
        return obj

    def put(self, wid, i):
        if self.hold:
            self.loops[wid].run_until_complete(self.conns[wid].put(self.keys[i], self.src[i]))
            return
        obj = self._alloc()
        try:
            memoryview(obj.byte_array).cast("B")[:] = self.payloads.get(i)
            self.loops[wid].run_until_complete(self.conns[wid].put(self.keys[i], obj))
        finally:
            obj.ref_count_down()

    def put_barrier(self, count):
        """lm:// PUT has no reply: the client returns once the bytes are sent. One EXIST on each
        socket after its last PUT returns only when the server has read and stored them all, so
        the put phase's wall time (not the per-op latency) includes it."""
        for w, (loop, conn) in enumerate(zip(self.loops, self.conns)):
            last = max((i for i in range(w, count, len(self.conns))), default=None)
            if last is not None and not loop.run_until_complete(conn.exists(self.keys[last])):
                log("lmcache: EXIST of key %d is false after its put (the gets will say)" % last)

    def release_put_sources(self):
        if self.hold:  # room for the read-back objects
            for obj in self.src:
                obj.ref_count_down()
            self.src = []

    def get(self, wid, i):
        obj = self.loops[wid].run_until_complete(self.conns[wid].get(self.keys[i]))
        if obj is None:
            raise PeerError("lm connector get returned None (miss or short read)")
        return obj  # a MemoryObj; released after comparison

    def close(self):
        for loop, conn in zip(self.loops, self.conns):
            try:
                loop.run_until_complete(conn.close())
                loop.close()
            except Exception:  # noqa: BLE001
                pass
        self.conns = []
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001
            pass


PEERS = {"redis": Redis, "mooncake": Mooncake, "lmcache": LMCache}


def as_bytes(peer, v):
    """Bytes read back by peer.get, and a release callback."""
    if v is None:
        return None, None
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v), None
    # LMCache MemoryObj
    b = memoryview(v.byte_array).cast("B").tobytes()
    return b, v.ref_count_down


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--system", required=True, choices=SYSTEMS)
    ap.add_argument("--size", type=int, required=True, help="object size in bytes")
    ap.add_argument("--count", type=int, required=True, help="number of objects")
    ap.add_argument("--concurrency", type=int, default=1, help="concurrent requests (threads)")
    ap.add_argument("--json", action="store_true",
                    help="print only the JSON line on stdout (else a summary line too)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--startup-timeout", type=float, default=60.0,
                    help="seconds to wait for the servers to be ready")
    ap.add_argument("--lease-ttl-ms", type=int, default=2000, help="mooncake master lease")
    ap.add_argument("--mooncake-segment", default=None,
                    help='mooncake_client --global_segment_size (default "3 GB", more if '
                         'COUNT*SIZE needs it)')
    ap.add_argument("--max-hold-bytes", type=int, default=4 << 30,
                    help="above COUNT*SIZE this, verify right after each get (see docstring)")
    ap.add_argument("--inject-mismatch", type=int, default=0, metavar="K",
                    help="self-test: alter the expected bytes of K objects (must be reported)")
    ap.add_argument("--keep-workdir", action="store_true", help="keep server logs")
    ap.add_argument("--verbose", action="store_true", help="client libraries log at INFO")
    args = ap.parse_args()
    if args.size <= 0 or args.count <= 0 or args.concurrency <= 0:
        ap.error("--size, --count and --concurrency must be positive")

    maybe_reexec(args.system)

    if not args.verbose:  # quieter client libraries (read when they load)
        os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")
        os.environ.setdefault("GLOG_minloglevel", "1")
    workdir = tempfile.mkdtemp(prefix="kvtier-peer-%s-" % args.system)
    peer = None

    def on_signal(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    atexit.register(stop_all)
    try:
        try:
            peer = PEERS[args.system](args, workdir)
        except NotInstalled as e:
            log("%s is not installed: %s. %s" % (args.system, e, SETUP_HINT))
            return EXIT_NOT_INSTALLED
        version = peer.version()
        log("%s: %s; size %d, count %d, concurrency %d" % (args.system, version, args.size,
                                                           args.count, args.concurrency))
        t0 = time.monotonic()
        peer.start(t0 + args.startup_timeout)
        log("servers ready in %.2f s" % (time.monotonic() - t0))

        hold = args.count * args.size <= args.max_hold_bytes
        payloads = Payloads(args.size, args.seed)
        peer.prepare(payloads, args.count, hold)
        log("payloads ready; put phase")

        static = getattr(peer, "static_partition", False)
        barrier = getattr(peer, "put_barrier", None)
        put_send_wall = [None]

        def after_puts():
            put_send_wall[0] = time.perf_counter()
            if barrier is not None:
                barrier(args.count)

        t_put = time.perf_counter()
        put_wall, put_lat, put_err = run_phase("put", args.count, args.concurrency, peer.put,
                                               static=static, after=after_puts)
        put_send_wall = put_send_wall[0] - t_put
        if hasattr(peer, "release_put_sources"):
            peer.release_put_sources()

        expected_bad = set(random.Random(args.seed).sample(range(args.count),
                                                           min(args.inject_mismatch, args.count)))
        verified = [0]
        mismatches = {}
        vlock = threading.Lock()

        def check(i, data):
            exp = payloads.get(i)
            if i in expected_bad:  # self-test: flip one byte of the expectation
                exp = bytearray(exp)
                exp[len(exp) // 2] ^= 0xFF
                exp = bytes(exp)
            ok = data is not None and data == exp
            with vlock:
                if ok:
                    verified[0] += 1
                elif data is not None and len(data) != len(exp):
                    mismatches[i] = "wrong length %d" % len(data)
                else:
                    mismatches[i] = "bytes differ"

        if hold:
            log("get phase")
            got = [None] * args.count

            def get_op(wid, i):
                got[i] = peer.get(wid, i)

            get_wall, get_lat, get_err = run_phase("get", args.count, args.concurrency, get_op,
                                                   static=static)
            log("verifying")
            for i in range(args.count):
                if i in get_err:
                    continue
                if isinstance(peer, Mooncake):
                    data, rel = peer.held(i), None
                else:
                    data, rel = as_bytes(peer, got[i])
                got[i] = None
                check(i, data)
                if rel:
                    rel()
        else:
            log("get phase (verifying after each op)")
            lat_only = [None] * args.count  # the get itself; the wall includes verification

            def get_and_check(wid, i):
                t0 = time.perf_counter()
                v = peer.get(wid, i)
                lat_only[i] = (time.perf_counter() - t0) * 1e6
                data, rel = as_bytes(peer, v)
                check(i, data)
                if rel:
                    rel()

            get_wall, _, get_err = run_phase("get", args.count, args.concurrency, get_and_check,
                                             static=static)
            get_lat = [x for x in lat_only if x is not None]
        for i, e in get_err.items():
            mismatches[i] = "get failed: " + e

        nbytes = args.count * args.size
        put_lat.sort()
        get_lat.sort()
        res = {
            "system": args.system,
            "size": args.size,
            "count": args.count,
            "concurrency": args.concurrency,
            "put_gbps": round(nbytes / put_wall / 1e9, 4),
            "get_gbps": round(nbytes / get_wall / 1e9, 4),
            "put_p50_us": round(pct(put_lat, 50), 1),
            "put_p99_us": round(pct(put_lat, 99), 1),
            "get_p50_us": round(pct(get_lat, 50), 1),
            "get_p99_us": round(pct(get_lat, 99), 1),
            "verified": verified[0],
            "mismatches": len(mismatches),
            "version": version,
            "put_errors": len(put_err),
            "get_errors": len(get_err),
            "put_wall_s": round(put_wall, 4),
            "get_wall_s": round(get_wall, 4),
            # Every request's latency, so percentiles can be pooled over rounds.
            "put_latencies_us": [round(x, 1) for x in put_lat],
            "get_latencies_us": [round(x, 1) for x in get_lat],
            "verify": "after-phase" if hold else "inline",
        }
        if barrier is not None:  # lm:// PUT is unacknowledged: see LMCache.put_barrier
            res["put_send_gbps"] = round(nbytes / put_send_wall / 1e9, 4)
        if isinstance(peer, Mooncake):
            res["segment"] = peer.segment
            res["lease_ttl_ms"] = args.lease_ttl_ms
        if mismatches:
            first = sorted(mismatches.items())[:5]
            log("MISMATCH: %d of %d objects not read back intact, e.g. %s"
                % (len(mismatches), args.count, first))
        if not args.json:
            log("%s put %.3f GB/s (p50 %.0f us) get %.3f GB/s (p50 %.0f us) verified %d/%d"
                % (args.system, res["put_gbps"], res["put_p50_us"], res["get_gbps"],
                   res["get_p50_us"], verified[0], args.count))
        print(json.dumps(res), flush=True)
        return EXIT_MISMATCH if mismatches or put_err else 0
    except PeerError as e:
        log("error: %s" % e)
        return 1
    except KeyboardInterrupt as e:
        log("interrupted (%s)" % (e or "SIGINT"))
        return 130
    finally:
        if peer is not None:
            try:
                peer.close()
            except Exception as e:  # noqa: BLE001
                log("close: %s" % e)
        stop_all()
        if args.keep_workdir:
            log("server logs kept in %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
