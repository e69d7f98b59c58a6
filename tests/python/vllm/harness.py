"""Processes for the vLLM end-to-end tests: kvtier agents and vLLM replicas (tests/python/vllm/replica.py)."""
import glob
import json
import os
import queue
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
VLLM_STARTUP_S = float(os.environ.get("KVTIER_VLLM_STARTUP_S", "300"))


def prompt(seed: int, n: int, vocab: int = 4000) -> List[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, vocab) for _ in range(n)]


class Agent:
    """`kvtier up` on `socket` with its pool in `data`."""

    def __init__(self, binary: str, socket: str, data: str, object_bytes: int, log_path: str,
                 arena_bytes: str = "256MiB"):
        self.binary, self.socket, self.data = binary, socket, data
        self.object_bytes, self.log_path, self.arena_bytes = object_bytes, log_path, arena_bytes
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Agent":
        assert self.proc is None
        log = open(self.log_path, "a")
        start_at = log.tell()  # this start's lines only (the log is kept across restarts)
        # 4 MiB segments: a few blocks each, so a test's blocks span sealed and unsealed segments.
        self.proc = subprocess.Popen(
            [self.binary, "up", "--socket", self.socket, "--data", self.data, "--arena-bytes", self.arena_bytes,
             "--object-bytes", str(self.object_bytes), "--pool-bytes", "1GiB", "--segment-bytes", "4MiB",
             "--metrics-addr", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT)
        # Ready when the agent's /readyz says so (serving, pool open): the socket files exist a
        # moment before the agent answers, and an engine that connects in that moment starts
        # its first request without kvtier.
        deadline = time.time() + 60
        url = None
        while True:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"kvtier agent did not become ready; see {self.log_path}")
            if url is None:
                with open(self.log_path, errors="replace") as f:
                    f.seek(start_at)
                    for line in f:
                        if line.startswith("kvtier agent: metrics http://"):
                            url = line.split("metrics ", 1)[1].strip().replace("/metrics", "/readyz")
            if url is not None:
                try:
                    with urllib.request.urlopen(url, timeout=1) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """SIGTERM: the agent drains its write-behind queue to the pool before it exits."""
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"kvtier agent did not stop within {timeout}s of signal {sig}")
        self.proc = None
        if sig == signal.SIGTERM and rc != 0:
            raise RuntimeError(f"kvtier agent exited with {rc} on SIGTERM; see {self.log_path}")

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Replica:
    """A vLLM engine process (tests/python/vllm/replica.py); `socket` None runs it without kvtier."""

    def __init__(self, python: str, model: str, log_path: str, socket: Optional[str] = None,
                 stats_dir: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                 load_async: bool = False, tp: int = 1, layerwise: bool = False):
        args = [python, os.path.join(HERE, "replica.py"), "--model", model, "--tp", str(tp)]
        if load_async:
            args += ["--load-async"]
        if layerwise:
            args += ["--layerwise"]
        if socket:
            args += ["--socket", socket]
        if stats_dir:
            args += ["--stats-dir", stats_dir]
        self.stats_dir = stats_dir
        self.log_path = log_path
        self._log = open(log_path, "w")
        # A session of its own: close() ends the engine's helper processes with it.
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env=env, text=True, bufsize=1, start_new_session=True)
        self._ready = False
        self._replies: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._pumper = threading.Thread(target=self._pump, daemon=True)
        self._pumper.start()

    def wait_ready(self) -> "Replica":
        if not self._ready:
            self._read(VLLM_STARTUP_S)
            self._ready = True
        return self

    def _pump(self) -> None:
        """Reads the replica's stdout (vLLM logs there too) so that it never blocks on a full
        pipe; replies go to the queue, the rest to the log."""
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                self._replies.put(json.loads(line[3:]))
            else:
                self._log.write(line)
        self._replies.put(None)  # end of output

    def _read(self, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"replica did not answer within {timeout}s; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                out = self._replies.get(timeout=min(left, 1.0))
            except queue.Empty:
                # vLLM's engine processes keep the pipe open when the replica itself dies.
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replica exited ({self.proc.returncode}); see {self.log_path}:\n"
                                       + self.log_tail())
                continue
            if out is None:
                raise RuntimeError(f"replica exited ({self.proc.poll()}); see {self.log_path}:\n" + self.log_tail())
            return out

    def log_tail(self, n: int = 30) -> str:
        self._log.flush()
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def send(self, cmd: dict) -> None:
        self.wait_ready()
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def generate(self, prompts: List[List[int]], max_tokens: int = 8, timeout: float = 120) -> List[dict]:
        self.send({"op": "generate", "prompts": prompts, "max_tokens": max_tokens})
        return self.result(timeout)

    def result(self, timeout: float = 120) -> List[dict]:
        out = self._read(timeout)
        if "outputs" not in out:
            raise RuntimeError(f"replica answered {out}")
        return out["outputs"]

    def stats(self) -> Dict[str, Dict[str, int]]:
        """Connector counters by process role: {"scheduler": {...}, "worker0": {...}}."""
        out: Dict[str, Dict[str, int]] = {}
        for path in glob.glob(os.path.join(self.stats_dir or "", "*.json")):
            role = os.path.basename(path).rsplit("-", 1)[0]
            with open(path) as f:
                counts = json.load(f)
            for k, v in counts.items():
                out.setdefault(role, {})
                out[role][k] = out[role].get(k, 0) + v
        return out

    def close(self) -> None:
        if self.proc.poll() is None and self._ready:
            try:
                self.send({"op": "quit"})
                self.proc.wait(60)
            except Exception:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of the engine is left
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._pumper.join(10)
        self._log.close()


# ---- the pool's segment files (crates/core/src/block.rs: 64-byte record header, magic KVTB) ----

_BLOCK_MAGIC = b"KVTB"
_PAGE = 4096


def find_records(data_dir: str) -> Dict[int, List[tuple]]:
    """Records in the segment files of `data_dir`: key -> [(path, payload offset, payload len)]."""
    found: Dict[int, List[tuple]] = {}
    for path in sorted(glob.glob(os.path.join(data_dir, "**", "*"), recursive=True)):
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        for off in range(_PAGE, len(data) - 64, _PAGE):  # page 0 is the segment header
            if data[off:off + 4] != _BLOCK_MAGIC:
                continue
            key_lo, key_hi, payload_len = struct.unpack_from("<QQQ", data, off + 16)
            found.setdefault((key_hi << 64) | key_lo, []).append((path, off + 64, payload_len))
    return found


def corrupt(path: str, offset: int, n: int = 64) -> None:
    """Flips `n` bytes at `offset` of `path`."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(n)
        f.seek(offset)
        f.write(bytes(x ^ 0xFF for x in b))
