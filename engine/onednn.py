"""Linear weights in oneDNN's own blocked order, used where they lie.

oneDNN's float32 linear kernel reads a weight fastest in the blocked order it
picks for it (on AVX-512: panels of 64 output rows, each 16 inputs deep). From
that order a product of sixteen tokens ran 1.4 to 1.8 times faster than from
the plain ``[out, in]`` order on a 2-core EPYC, and one token at least as fast.
torch hands the order out only as a copy that oneDNN owns, which a weight
streamed from the page cache cannot be. So the engine lays weights out in that
order itself, in memory it owns (resident weights, a mapped store file), and
wraps those bytes as a oneDNN tensor without copying them, through torch's C
shim.

Which order oneDNN picks depends on the processor and on torch's build, so it
is found by asking oneDNN, never assumed: every shape a model uses is checked,
and anything unexpected leaves the weights in the plain order.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Orders of the form AB{inputs}b{rows}a that oneDNN uses for float32 weights.
_CANDIDATES = ((16, 64), (16, 32), (16, 16), (8, 64), (8, 32), (8, 16), (8, 8))
# The batch size oneDNN is told to expect; sixteen streams are the busy case.
_BATCH_HINT = 16
# Probe elements are numbered from 2**23: as float32 bits, every one of them is
# a normal number (no denormal to flush, no NaN below 2**31 - 2**23).
_NORMAL = 1 << 23
# The probe holds the weight twice (numbered, then reordered): at most 512 MB.
_PROBE_LIMIT = 1 << 26
# Elements compared at a time when checking a probe (16 MB of int32).
_CHECK_ELEMENTS = 1 << 22
# Views kept: far more than a model's linear weights in every place they lie.
_MAX_VIEWS = 8192
_views: dict[tuple[int, torch.Size], torch.Tensor] = {}


@dataclass(frozen=True)
class Blocking:
    """One blocked order: panels of ``rows`` outputs, ``inputs`` deep per block."""

    inputs: int
    rows: int

    @property
    def name(self) -> str:
        return f"{self.inputs}x{self.rows}"

    @classmethod
    def parse(cls, name: str) -> Blocking:
        """The ``Blocking`` a ``name`` gives; ValueError if none."""
        inputs, rows = (int(part) for part in name.split("x"))
        if inputs <= 0 or rows <= 0:
            raise ValueError(name)
        return cls(inputs, rows)

    def fits(self, shape: tuple[int, ...] | torch.Size) -> bool:
        """Whether a weight of ``shape`` needs no padding in this order."""
        return (
            len(shape) == 2
            and shape[0] % self.rows == 0
            and shape[1] % self.inputs == 0
        )

    def blocked_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        out, inp = shape
        return out // self.rows, inp // self.inputs, self.inputs, self.rows

    def block(self, weight: torch.Tensor) -> torch.Tensor:
        """``[out, in]`` -> ``[out/rows, in/inputs, inputs, rows]``, contiguous."""
        out, inp = weight.shape
        panels = weight.view(
            out // self.rows, self.rows, inp // self.inputs, self.inputs
        )
        return panels.permute(0, 2, 3, 1).contiguous()

    def unblock(self, blocked: torch.Tensor) -> torch.Tensor:
        """The plain ``[out, in]`` weight of a blocked one (a copy)."""
        out = blocked.new_empty(plain_shape(blocked.shape))
        self.unblock_into(blocked, out)
        return out

    def unblock_into(self, blocked: torch.Tensor, out: torch.Tensor) -> None:
        """``unblock`` into ``out`` (``[out, in]``, any dtype), allocating nothing."""
        panels, depth, inputs, rows = blocked.shape
        out.view(panels, rows, depth, inputs).copy_(blocked.permute(0, 3, 1, 2))

    def rows_of(self, blocked: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of a blocked weight, as an embedding looks them up."""
        # [*ids, in/inputs, inputs] -> [*ids, in]
        return blocked[ids // self.rows, :, :, ids % self.rows].flatten(-2)


def plain_shape(blocked: tuple[int, ...] | torch.Size) -> tuple[int, int]:
    """``[out, in]`` of a blocked weight's four dimensions."""
    panels, depth, inputs, rows = blocked
    return panels * rows, depth * inputs


@cache
def machine_blocking() -> Blocking | None:
    """The order oneDNN picks for float32 weights here; None if not one we know."""
    if not _wrapping_available():
        return None
    for inputs, rows in _CANDIDATES:
        candidate = Blocking(inputs, rows)
        if picks(candidate, (4 * rows, 4 * inputs)):
            logger.debug("oneDNN lays float32 weights out as %s", candidate.name)
            return candidate
    logger.info("oneDNN's weight order here is not one the engine knows: plain order")
    return None


def picks(blocking: Blocking, shape: tuple[int, ...]) -> bool:
    """Whether oneDNN lays a float32 weight of ``shape`` out in ``blocking``'s order."""
    return blocking.fits(shape) and _descriptor(blocking, *shape) is not None


def onednn_view(blocked: torch.Tensor) -> torch.Tensor:
    """A oneDNN tensor over a blocked weight's own bytes (no copy, not owned).

    The caller keeps ``blocked`` alive for as long as the view is used.
    """
    out, inp = plain_shape(blocked.shape)
    _, _, inputs, rows = blocked.shape
    descriptor = _descriptor(Blocking(inputs, rows), out, inp)
    if not blocked.is_contiguous():
        raise ValueError("a blocked weight must lie in one piece of memory")
    if descriptor is None:
        raise ValueError(f"oneDNN does not lay a {out}x{inp} weight out this way")
    return _Shim.get().wrap(blocked.data_ptr(), out, inp, descriptor)


def cached_view(blocked: torch.Tensor) -> torch.Tensor:
    """``onednn_view``, made once per place in memory.

    A weight used in place keeps its address from sweep to sweep, so the view
    costs a dictionary lookup, not a call into the shim, per product.
    """
    key = (blocked.data_ptr(), blocked.shape)
    view = _views.get(key)
    if view is None:
        if len(_views) >= _MAX_VIEWS:
            _views.clear()  # views own nothing: dropping them frees no weight
        view = _views[key] = onednn_view(blocked)
    return view


class BlockedEmbedding(nn.Embedding):
    """An embedding that shares its weight with a blocked output head."""

    blocking: Blocking

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.blocking.rows_of(self.weight, input)


@cache
def _descriptor(blocking: Blocking, out: int, inp: int) -> bytes | None:
    """oneDNN's description of an ``[out, in]`` weight, if it is in our order.

    One reorder of a weight whose every element is told apart by its bits
    shows both where oneDNN puts each element and the description to wrap
    weights of that shape with. Run once per shape, before the weights load.
    """
    if out * inp > _PROBE_LIMIT:
        return None  # the probe itself would cost more memory than it is worth
    pattern = (torch.arange(out * inp, dtype=torch.int32) + _NORMAL).view(out, inp)
    packed = torch.ops.mkldnn._reorder_linear_weight(
        pattern.view(torch.float32), _BATCH_HINT
    )
    del pattern
    count = out * inp
    if torch.ops.mkldnn._nbytes(packed) != 4 * count:
        return None
    address = torch.ops.mkldnn.data_ptr(packed)
    placed = torch.frombuffer(
        (ctypes.c_int32 * count).from_address(address), dtype=torch.int32
    )
    if not _in_order(placed, blocking, out, inp):
        return None
    return bytes(torch.ops.mkldnn._get_mkldnn_serialized_md(packed).tolist())


def _in_order(placed: torch.Tensor, blocking: Blocking, out: int, inp: int) -> bool:
    """Whether element (n, k), numbered n * inp + k, is where ``block`` puts it."""
    rows, inputs = blocking.rows, blocking.inputs
    count = out // rows
    panels = placed.view(count, inp // inputs, inputs, rows)
    within = (
        torch.arange(inp // inputs, dtype=torch.int32)[:, None, None] * inputs
        + torch.arange(inputs, dtype=torch.int32)[None, :, None]
        + torch.arange(rows, dtype=torch.int32)[None, None, :] * inp
    )  # [in/inputs, inputs, rows]: the numbers of one panel, less its start
    chunk = max(1, _CHECK_ELEMENTS // within.numel())
    for first in range(0, count, chunk):
        last = min(first + chunk, count)
        starts = torch.arange(first, last, dtype=torch.int32) * (rows * inp)
        expected = (starts + _NORMAL)[:, None, None, None] + within
        if not torch.equal(panels[first:last], expected):
            return False
    return True


def _wrapping_available() -> bool:
    ops = ("_reorder_linear_weight", "_linear_pointwise", "_get_mkldnn_serialized_md")
    if not torch.backends.mkldnn.is_available():
        return False
    if not all(hasattr(torch.ops.mkldnn, name) for name in ops):
        return False
    try:
        _Shim.get()
    except (OSError, AttributeError) as error:
        logger.info("no oneDNN tensors over the engine's memory (%s)", error)
        return False
    return True


class _Shim:
    """torch's C shim, which makes a oneDNN tensor over memory it does not own."""

    _instance: _Shim | None = None

    def __init__(self) -> None:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        self._create = lib.aoti_torch_create_tensor_from_blob_v2
        self._create.restype = ctypes.c_int32
        for name in (
            "aoti_torch_layout__mkldnn",
            "aoti_torch_dtype_float32",
            "aoti_torch_device_type_cpu",
        ):
            getattr(lib, name).restype = ctypes.c_int32
        self._layout = lib.aoti_torch_layout__mkldnn()
        self._dtype = lib.aoti_torch_dtype_float32()
        self._device = lib.aoti_torch_device_type_cpu()
        self._steal = torch._C._aoti.alloc_tensor_by_stealing_from_void_ptr
        capsule = ctypes.pythonapi.PyCapsule_New
        capsule.restype = ctypes.py_object
        capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        self._capsule = capsule

    @classmethod
    def get(cls) -> _Shim:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def wrap(self, address: int, out: int, inp: int, descriptor: bytes) -> torch.Tensor:
        sizes = (ctypes.c_int64 * 2)(out, inp)
        strides = (ctypes.c_int64 * 2)(inp, 1)
        meta = (ctypes.c_uint8 * len(descriptor)).from_buffer_copy(descriptor)
        handle = ctypes.c_void_p()
        status = self._create(
            ctypes.c_void_p(address), ctypes.c_int64(2), sizes, strides,
            ctypes.c_int64(0), ctypes.c_int32(self._dtype),
            ctypes.c_int32(self._device), ctypes.c_int32(0), ctypes.byref(handle),
            ctypes.c_int32(self._layout), meta, ctypes.c_int64(len(descriptor)),
        )  # fmt: skip
        if status != 0:
            raise RuntimeError("torch could not wrap a blocked weight for oneDNN")
        # The new tensor's handle becomes a Python tensor that owns the handle.
        return self._steal(self._capsule(handle.value, None, None))
