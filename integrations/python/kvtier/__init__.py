"""kvtier's Python binding: ctypes over libkvtier (no compiled extension).

The library is found at $KVTIER_LIB, else as `libkvtier.so` next to this package, else on the
system's library path. Everything here calls the C ABI (`ffi/include/kvtier.h`), so the key spec
is implemented once, in Rust.

    from kvtier import Namespace, Layout, Client
    ns = Namespace("meta-llama/Llama-3.1-8B-Instruct", kv_dtype="bfloat16",
                   layout_id="vllm-cpu", tokens_per_block=128)
    keys = ns.block_keys(token_ids)            # list of 128-bit ints, one per full block
    layout = Layout("vllm-cpu", num_layers=32, num_blocks=4096, block_size=128,
                    num_kv_heads=8, head_size=128, dtype="bfloat16")
    client = Client("/run/kvtier/agent.sock", layout)
    client.register_kv([tensor.data_ptr() for tensor in kv_caches])
    n = client.lookup(keys)                    # leading blocks stored
    client.save(keys, block_ids)               # engine blocks -> agent
    loaded = client.load(keys[:n], block_ids)  # agent -> engine blocks; False: recompute
"""
import ctypes
import ctypes.util
import os
from typing import List, Optional, Sequence

# KVT_ABI_VERSION and the status codes (KVT_OK, KVT_ERR_*) of ffi/include/kvtier.h.
ABI_VERSION = 1

KVT_OK = 0
_STATUS_NAMES = {
    0: "KVT_OK", 1: "KVT_ERR_NULL", 2: "KVT_ERR_INVALID", 3: "KVT_ERR_NOT_FOUND",
    4: "KVT_ERR_NO_SPACE", 5: "KVT_ERR_CORRUPT", 6: "KVT_ERR_UNAVAILABLE", 7: "KVT_ERR_TIMEOUT",
    8: "KVT_ERR_IO", 9: "KVT_ERR_PERMISSION", 10: "KVT_ERR_CLOSED", 11: "KVT_ERR_INTERNAL",
}


class KvtierError(Exception):
    """A libkvtier call failed: `status` is the KVT_ERR_* code, the message says what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{_STATUS_NAMES.get(status, status)}: {message}")
        self.status = status
        self.message = message


# The header's structs, field for field; `_CamelCase` is the header's `kvt_camel_case` (the
# header check, tests/python/binding/test_header.py, pairs them by that rule).
class _Key(ctypes.Structure):
    _fields_ = [("lo", ctypes.c_uint64), ("hi", ctypes.c_uint64)]


class _NamespaceParams(ctypes.Structure):
    _fields_ = [
        ("model", ctypes.c_char_p), ("revision", ctypes.c_char_p), ("kv_dtype", ctypes.c_char_p),
        ("layout_id", ctypes.c_char_p), ("tokens_per_block", ctypes.c_uint32),
        ("tp_size", ctypes.c_uint32), ("tp_rank", ctypes.c_uint32),
        ("pp_size", ctypes.c_uint32), ("pp_rank", ctypes.c_uint32),
        ("salt", ctypes.POINTER(ctypes.c_uint8)), ("salt_len", ctypes.c_size_t),
    ]


class _Extra(ctypes.Structure):
    _fields_ = [
        ("items", ctypes.POINTER(ctypes.POINTER(ctypes.c_uint8))),
        ("lens", ctypes.POINTER(ctypes.c_size_t)),
        ("n_items", ctypes.c_size_t),
    ]


class _LayoutParams(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_char_p), ("num_layers", ctypes.c_uint32), ("num_blocks", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32), ("num_kv_heads", ctypes.c_uint32),
        ("head_size", ctypes.c_uint32), ("dtype", ctypes.c_char_p),
    ]


class _ClientParams(ctypes.Structure):
    _fields_ = [
        ("socket", ctypes.c_char_p), ("layout", ctypes.c_void_p), ("engine", ctypes.c_char_p),
        ("timeout_ms", ctypes.c_uint32), ("load_budget_ms", ctypes.c_uint32),
    ]


def _find_library() -> str:
    env = os.environ.get("KVTIER_LIB")
    if env:
        return env
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libkvtier.so")
    if os.path.exists(here):
        return here
    found = ctypes.util.find_library("kvtier")
    if found:
        return found
    raise OSError("libkvtier not found: set KVTIER_LIB to the path of libkvtier.so "
                  "(cargo build --release -p kvtier-ffi puts it in target/release/)")


# Every function this binding calls, as `name: (argtypes, restype)`, typed after the header
# (ffi/include/kvtier.h; tests/python/binding/test_header.py checks them against it, and the
# structs above, the status codes and ABI_VERSION too). A pointer to an opaque handle
# (kvt_client, kvt_layout, ...) or to untyped bytes is c_void_p.
_st = ctypes.c_int  # kvt_status
_SIGNATURES = {
    "kvt_abi_version": ([], ctypes.c_uint32),
    "kvt_last_error": ([], ctypes.c_char_p),
    "kvt_namespace_new": ([ctypes.POINTER(_NamespaceParams), ctypes.POINTER(ctypes.c_void_p)], _st),
    "kvt_namespace_free": ([ctypes.c_void_p], None),
    "kvt_namespace_digest": ([ctypes.c_void_p, ctypes.POINTER(_Key)], _st),
    "kvt_block_count": ([ctypes.c_void_p, ctypes.c_size_t], ctypes.c_size_t),
    "kvt_block_keys": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32), ctypes.c_size_t,
                        ctypes.POINTER(_Extra), ctypes.c_size_t, ctypes.POINTER(_Key),
                        ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)], _st),
    "kvt_layout_new": ([ctypes.POINTER(_LayoutParams), ctypes.POINTER(ctypes.c_void_p)], _st),
    "kvt_layout_free": ([ctypes.c_void_p], None),
    "kvt_layout_object_len": ([ctypes.c_void_p], ctypes.c_uint64),
    "kvt_layout_layer_bytes": ([ctypes.c_void_p], ctypes.c_uint64),
    "kvt_gather": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                    ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t], _st),
    "kvt_scatter": ([ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                     ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t], _st),
    "kvt_client_connect": ([ctypes.POINTER(_ClientParams), ctypes.POINTER(ctypes.c_void_p)], _st),
    "kvt_client_close": ([ctypes.c_void_p], None),
    "kvt_client_free": ([ctypes.c_void_p], None),
    "kvt_register_kv": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                         ctypes.c_size_t], _st),
    "kvt_register_kv_device": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
                                ctypes.c_size_t, ctypes.c_int32], _st),
    "kvt_lookup": ([ctypes.c_void_p, ctypes.POINTER(_Key), ctypes.c_size_t,
                    ctypes.POINTER(ctypes.c_uint32)], _st),
    "kvt_lookup_vs_recompute": ([ctypes.c_void_p, ctypes.POINTER(_Key), ctypes.c_size_t, ctypes.c_uint64,
                                 ctypes.POINTER(ctypes.c_uint32)], _st),
    "kvt_save": ([ctypes.c_void_p, ctypes.POINTER(_Key), ctypes.POINTER(ctypes.c_uint32),
                  ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)], _st),
    "kvt_load_start": ([ctypes.c_void_p, ctypes.POINTER(_Key), ctypes.POINTER(ctypes.c_uint32),
                        ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)], _st),
    "kvt_ticket_wait": ([ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint8),
                         ctypes.c_size_t], _st),
    "kvt_ticket_wait_layer": ([ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                               ctypes.POINTER(ctypes.c_uint32)], _st),
    "kvt_ticket_free": ([ctypes.c_void_p], None),
}


def _load():
    lib = ctypes.CDLL(_find_library())
    for name, (args, res) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = res
    version = lib.kvt_abi_version()
    if version != ABI_VERSION:
        raise OSError(f"libkvtier ABI version {version}, this binding expects {ABI_VERSION}")
    return lib


_lib = None


def lib():
    """The loaded libkvtier (loaded on first use)."""
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(status: int) -> None:
    if status != KVT_OK:
        raise KvtierError(status, (lib().kvt_last_error() or b"").decode("utf-8", "replace"))


def _key_int(k: _Key) -> int:
    return (k.hi << 64) | k.lo


class Namespace:
    """A validated key namespace (see docs/key-spec.md)."""

    def __init__(self, model: str, *, kv_dtype: str, layout_id: str, tokens_per_block: int,
                 revision: str = "", tp_size: int = 1, tp_rank: int = 0, pp_size: int = 1,
                 pp_rank: int = 0, salt: bytes = b""):
        self.tokens_per_block = tokens_per_block
        salt_buf = (ctypes.c_uint8 * max(len(salt), 1)).from_buffer_copy(salt or b"\0")
        p = _NamespaceParams(model.encode(), revision.encode(), kv_dtype.encode(), layout_id.encode(),
                             tokens_per_block, tp_size, tp_rank, pp_size, pp_rank,
                             ctypes.cast(salt_buf, ctypes.POINTER(ctypes.c_uint8)), len(salt))
        handle = ctypes.c_void_p()
        _check(lib().kvt_namespace_new(ctypes.byref(p), ctypes.byref(handle)))
        self._h = handle

    def __del__(self):
        h = getattr(self, "_h", None)
        if h and _lib is not None:
            _lib.kvt_namespace_free(h)
            self._h = None

    @property
    def digest(self) -> int:
        k = _Key()
        _check(lib().kvt_namespace_digest(self._h, ctypes.byref(k)))
        return _key_int(k)

    def block_keys(self, tokens: Sequence[int], extras: Optional[Sequence[Sequence[bytes]]] = None) -> List[int]:
        """Keys of every full block of `tokens`; `extras[i]` are block i's extra key items."""
        n = len(tokens)
        arr = (ctypes.c_uint32 * max(n, 1))(*tokens)
        cap = lib().kvt_block_count(self._h, n)
        out = (_Key * max(cap, 1))()
        got = ctypes.c_size_t()
        keep = []
        ex = None
        n_ex = 0
        if extras:
            n_ex = len(extras)
            ex = (_Extra * n_ex)()
            for i, items in enumerate(extras):
                bufs = [(ctypes.c_uint8 * max(len(b), 1)).from_buffer_copy(b or b"\0") for b in items]
                ptrs = (ctypes.POINTER(ctypes.c_uint8) * max(len(items), 1))(
                    *[ctypes.cast(b, ctypes.POINTER(ctypes.c_uint8)) for b in bufs])
                lens = (ctypes.c_size_t * max(len(items), 1))(*[len(b) for b in items])
                keep.extend([bufs, ptrs, lens])
                ex[i] = _Extra(ptrs, lens, len(items))
        _check(lib().kvt_block_keys(self._h, arr, n, ex, n_ex, out, cap, ctypes.byref(got)))
        return [_key_int(out[i]) for i in range(got.value)]


class Layout:
    """An engine's KV layout: gather an engine block into a block object and scatter it back."""

    def __init__(self, kind: str, *, num_layers: int, num_blocks: int, block_size: int,
                 num_kv_heads: int, head_size: int, dtype: str):
        p = _LayoutParams(kind.encode(), num_layers, num_blocks, block_size, num_kv_heads, head_size,
                          dtype.encode())
        handle = ctypes.c_void_p()
        _check(lib().kvt_layout_new(ctypes.byref(p), ctypes.byref(handle)))
        self._h = handle
        self.num_layers = num_layers
        self.object_len = lib().kvt_layout_object_len(handle)
        self.layer_bytes = lib().kvt_layout_layer_bytes(handle)

    def __del__(self):
        h = getattr(self, "_h", None)
        if h and _lib is not None:
            _lib.kvt_layout_free(h)
            self._h = None

    def _layers(self, layer_ptrs: Sequence[int]):
        return (ctypes.c_void_p * max(len(layer_ptrs), 1))(*layer_ptrs)

    def gather(self, layer_ptrs: Sequence[int], block: int, dst_ptr: int) -> None:
        """Copies engine block `block` (layer tensors at `layer_ptrs`) into the object at `dst_ptr`."""
        _check(lib().kvt_gather(self._h, self._layers(layer_ptrs), len(layer_ptrs), block, dst_ptr,
                                self.object_len))

    def scatter(self, layer_ptrs: Sequence[int], block: int, src_ptr: int) -> None:
        """Copies the object at `src_ptr` into engine block `block`."""
        _check(lib().kvt_scatter(self._h, self._layers(layer_ptrs), len(layer_ptrs), block, src_ptr,
                                 self.object_len))


def _keys_array(keys: Sequence[int]):
    arr = (_Key * max(len(keys), 1))()
    for i, k in enumerate(keys):
        arr[i] = _Key(k & 0xFFFFFFFFFFFFFFFF, k >> 64)
    return arr


class LoadTicket:
    """A load in flight: `wait()` returns per-block flags (False: recompute that block);
    `wait_layer(i)` returns once layer i of every block is in place (layers arrive in order)."""

    def __init__(self, handle, n: int):
        self._h = handle
        self.n = n

    def wait_layer(self, layer: int, timeout_ms: int = 10000) -> int:
        """Waits until layer `layer` of every block is copied, or the load ended (then `wait()`
        tells which blocks landed); returns how many leading layers are copied. Raises
        KvtierError (KVT_ERR_TIMEOUT) if the layer is not there in time."""
        ready = ctypes.c_uint32()
        _check(lib().kvt_ticket_wait_layer(self._h, layer, timeout_ms, ctypes.byref(ready)))
        return ready.value

    def wait(self, timeout_ms: int = 10000) -> List[bool]:
        flags = (ctypes.c_uint8 * max(self.n, 1))()
        _check(lib().kvt_ticket_wait(self._h, timeout_ms, flags, self.n))
        return [bool(flags[i]) for i in range(self.n)]

    def __del__(self):
        h = getattr(self, "_h", None)
        if h and _lib is not None:
            _lib.kvt_ticket_free(h)
            self._h = None


class Client:
    """A connection to the node agent (see `kvtier up`). A call that fails raises KvtierError;
    treat UNAVAILABLE and TIMEOUT as misses: the client reconnects by itself."""

    def __init__(self, socket: str, layout: "Layout", engine: str = "python", timeout_ms: int = 2000,
                 load_budget_ms: int = 1000):
        self.layout = layout
        p = _ClientParams(socket.encode(), layout._h, engine.encode(), timeout_ms, load_budget_ms)
        handle = ctypes.c_void_p()
        _check(lib().kvt_client_connect(ctypes.byref(p), ctypes.byref(handle)))
        self._h = handle

    def close(self) -> None:
        lib().kvt_client_close(self._h)

    def __del__(self):
        h = getattr(self, "_h", None)
        if h and _lib is not None:
            _lib.kvt_client_free(h)
            self._h = None

    def register_kv(self, layer_ptrs: Sequence[int]) -> None:
        """Registers the engine's layer tensors (host addresses), kept valid while registered."""
        arr = (ctypes.c_void_p * max(len(layer_ptrs), 1))(*layer_ptrs)
        _check(lib().kvt_register_kv(self._h, self.layout._h, arr, len(layer_ptrs)))

    def register_kv_device(self, layer_ptrs: Sequence[int], device: int) -> None:
        """Registers layer tensors on CUDA device `device` (device addresses). Raises KvtierError
        (KVT_ERR_INVALID) when libkvtier was built without its `cuda` feature."""
        arr = (ctypes.c_uint64 * max(len(layer_ptrs), 1))(*layer_ptrs)
        _check(lib().kvt_register_kv_device(self._h, self.layout._h, arr, len(layer_ptrs), device))

    def lookup(self, keys: Sequence[int], recompute_us: int = 0) -> int:
        """How many leading keys are held (and loadable within the load budget). With
        `recompute_us`, the engine's estimate of the time to recompute all of `keys`, only as many
        as load faster than they recompute."""
        prefix = ctypes.c_uint32()
        if recompute_us > 0:
            _check(lib().kvt_lookup_vs_recompute(self._h, _keys_array(keys), len(keys),
                                                 int(recompute_us), ctypes.byref(prefix)))
        else:
            _check(lib().kvt_lookup(self._h, _keys_array(keys), len(keys), ctypes.byref(prefix)))
        return prefix.value

    def save(self, keys: Sequence[int], block_ids: Sequence[int]) -> int:
        if len(keys) != len(block_ids):
            raise ValueError(f"{len(keys)} keys for {len(block_ids)} block ids")
        ids = (ctypes.c_uint32 * max(len(block_ids), 1))(*block_ids)
        stored = ctypes.c_size_t()
        _check(lib().kvt_save(self._h, _keys_array(keys), ids, len(keys), ctypes.byref(stored)))
        return stored.value

    def load_start(self, keys: Sequence[int], block_ids: Sequence[int]) -> LoadTicket:
        if len(keys) != len(block_ids):
            raise ValueError(f"{len(keys)} keys for {len(block_ids)} block ids")
        ids = (ctypes.c_uint32 * max(len(block_ids), 1))(*block_ids)
        t = ctypes.c_void_p()
        _check(lib().kvt_load_start(self._h, _keys_array(keys), ids, len(keys), ctypes.byref(t)))
        return LoadTicket(t, len(keys))

    def load(self, keys: Sequence[int], block_ids: Sequence[int], timeout_ms: int = 10000) -> List[bool]:
        return self.load_start(keys, block_ids).wait(timeout_ms)
