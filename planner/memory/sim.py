"""A shape-level replay of one training step: which tensors exist, when, and what autograd saves.

The memory model does not guess activation factors. It replays the forward pass of the model op
by op on *symbolic* tensors (a byte count and a ``requires_grad`` flag, no data), with the
saving rules PyTorch's autograd uses for each op (``tools/autograd/derivatives.yaml``: e.g. a
``Linear`` saves its input only when its weight trains; ``mul`` saves each operand only when the
*other* one needs a gradient; a dtype cast saves nothing), then replays the backward pass node by
node in reverse order with the engine's lifetimes (a node's saved tensors and incoming gradient
live until it has produced its input gradients; ``add`` passes its gradient through without a
copy; a gradient whose dtype differs from its input is cast, which allocates).

Lifetimes come from Python itself: a :class:`Tensor` adds its bytes to the simulation's live
count when created and removes them when the last reference dies (CPython reference counting is
deterministic), so a program that mirrors transformers' forward code, temporaries included, has
the same live set at every op as the real run. Byte counts are rounded to the CUDA caching
allocator's 512-byte blocks and may be numpy arrays, so one replay evaluates a whole sweep of
batch sizes / sequence lengths at once.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from planner.constants import CUDA_ALLOCATION_ROUNDING_BYTES, DTYPE_BYTES

Bytes = Any  # int or numpy integer array (vectorised sweeps)


def round_alloc(nbytes: Bytes) -> Bytes:
    """Bytes the CUDA caching allocator hands out for a request (512-byte blocks)."""
    r = CUDA_ALLOCATION_ROUNDING_BYTES
    return -(-nbytes // r) * r


def _max(a: Bytes, b: Bytes) -> Bytes:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.maximum(a, b)
    return a if a >= b else b


class Sim:
    """Live-byte bookkeeping for one replay. ``category`` tags every allocation so the peak can be
    broken down (activations / logits / gradients / temporaries)."""

    def __init__(self) -> None:
        self.live: dict[str, Bytes] = {}
        self.peak_total: Bytes = 0
        self.peak_snapshot: dict[str, Bytes] = {}
        self.base: dict[str, Bytes] = {}  # constant bytes outside the replay (weights, optimizer state)
        self._base_total: Bytes = 0
        self._live_total: Bytes = 0
        self.category = "activations"
        self._ids = itertools.count()
        self.nodes: list[Node] = []
        self.param_grads: dict[str, Tensor] = {}
        self.discard_saved = False  # inside a checkpointed forward: saved tensors are not kept

    # -- accounting ------------------------------------------------------------------------
    def set_base(self, base: dict[str, Bytes]) -> None:
        self.base = dict(base)
        self._base_total = sum(self.base.values())

    def note_peak(self, extra: Bytes = 0, extra_category: str = "temporaries") -> None:
        total = self._live_total + self._base_total + extra
        if isinstance(total, np.ndarray) or isinstance(self.peak_total, np.ndarray):
            better = total > self.peak_total
            if np.any(better):
                snap = {**self.base, **self.live}
                snap[extra_category] = snap.get(extra_category, 0) + extra
                keys = set(snap) | set(self.peak_snapshot)
                self.peak_snapshot = {k: np.where(better, snap.get(k, 0), self.peak_snapshot.get(k, 0)) for k in keys}
                self.peak_total = np.where(better, total, self.peak_total)
        elif total > self.peak_total:
            self.peak_total = total
            snap = {**self.base, **self.live}
            snap[extra_category] = snap.get(extra_category, 0) + extra
            self.peak_snapshot = snap

    def alloc(self, nbytes: Bytes, category: str) -> None:
        live = self.live
        live[category] = live.get(category, 0) + nbytes
        self._live_total = self._live_total + nbytes
        total = self._live_total + self._base_total
        if isinstance(total, np.ndarray) or isinstance(self.peak_total, np.ndarray) or total > self.peak_total:
            self.note_peak()

    def free(self, nbytes: Bytes, category: str) -> None:
        self.live[category] = self.live[category] - nbytes
        self._live_total = self._live_total - nbytes

    def reset_peak(self) -> None:
        self.peak_total = 0
        self.peak_snapshot = {}
        self.note_peak()

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, numel: Bytes, dtype: str, rg: bool = False, category: str | None = None) -> "Tensor":
        return Tensor(self, numel, dtype, rg, category or self.category)

    def node(self, saved: list["Tensor"], backward: Callable[[Any], dict], outputs: list["Tensor"],
             inputs: list["Tensor"]) -> "Node":
        """Record a backward node. The node holds the storages it saves and the nodes of its inputs
        (the graph's edges); outputs hold the node. A branch whose outputs all die is freed with its
        saved tensors, as in PyTorch."""
        keep = [] if self.discard_saved else [t.storage for t in saved if t is not None]
        edges = [t.grad_fn for t in inputs if t is not None and getattr(t, "grad_fn", None) is not None]
        n = Node(saved=keep, backward=backward, output_keys=[o.key for o in outputs], seq=next(self._ids), edges=edges)
        self.nodes.append(weakref.ref(n))
        for o in outputs:
            o.grad_fn = n
        return n

    # -- backward --------------------------------------------------------------------------------
    def backward(self, loss: "Tensor") -> None:
        """Replay the backward pass from ``loss``: the nodes still alive (reachable from the loss
        or from live tensors), in reverse creation order, as the engine's ready queue orders nodes
        by sequence number."""
        nodes, self.nodes = self.nodes, []
        grads = self.run_backward(nodes, {loss.key: self.tensor(1, loss.dtype, category="gradients_act")})
        grads.clear()

    def run_backward(self, nodes: list, grads: dict[int, "Tensor"]) -> dict[int, "Tensor"]:
        # the engine's graph task holds every node that will run until it has run
        nodes = [n for n in (r() if isinstance(r, weakref.ref) else r for r in nodes) if n is not None]
        while nodes:
            node = nodes.pop()
            outs = [grads.pop(k, None) for k in node.output_keys]
            if all(o is None for o in outs):
                node.saved.clear()
                continue
            produced = node.backward(outs)
            for key, g in produced.items():
                if g is None:
                    continue
                if key in grads:  # gradient accumulation: in place, after the new gradient existed
                    self.note_peak()
                else:
                    grads[key] = g
                del g
            self.note_peak()
            del outs, produced
            node.saved.clear()
            node.edges.clear()
            del node
        return grads

    def checkpoint(self, fn: Callable[["Tensor"], "Tensor"], x: "Tensor") -> "Tensor":
        """``torch.utils.checkpoint(fn, x, use_reentrant=False)``: the forward keeps only the
        input; backward recomputes ``fn`` (its saved tensors exist again, one region at a time)
        and runs the region's backward."""
        outer, self.nodes = self.nodes, []
        self.discard_saved = True
        out = fn(x)
        self.discard_saved = False
        inner, self.nodes = self.nodes, outer
        del inner
        if not out.rg:
            return out
        xk = x.key

        holder: dict[str, Node] = {}

        def bw(outs):
            outer2, self.nodes = self.nodes, []
            out2 = fn(holder["input"])
            key2 = out2.key
            region, self.nodes = [r() for r in self.nodes], outer2  # the recomputed graph, held
            del out2  # the recomputed output itself is not kept (early stop)
            rest = self.run_backward(region, {key2: outs[0]})
            g = rest.pop(xk, None)
            rest.clear()
            return {xk: g}

        holder["input"] = x  # the checkpoint keeps its input for the recomputation
        self.node([], bw, [out], inputs=[x])
        return out

    def param_grad(self, key: str, numel: int, dtype: str) -> None:
        """``.grad`` of a trainable parameter: created by the first node that reaches it, then
        accumulated in place (a temporary of the same size exists while adding)."""
        if key in self.param_grads:
            tmp = self.tensor(numel, dtype, category="gradients")
            self.note_peak()
            del tmp
        else:
            self.param_grads[key] = self.tensor(numel, dtype, category="gradients")


class Storage:
    """The bytes behind one or more tensors; freed when the last holder lets go."""

    __slots__ = ("sim", "nbytes", "category", "__weakref__")

    def __init__(self, sim: Sim, nbytes: Bytes, category: str) -> None:
        self.sim = sim
        self.nbytes = nbytes
        self.category = category
        sim.alloc(nbytes, category)

    def __del__(self) -> None:
        self.sim.free(self.nbytes, self.category)


class Tensor:
    """A symbolic tensor: its storage (bytes rounded to the allocator block), dtype, requires_grad
    and the node that produced it. Saved tensors are held by their storage (no reference cycle
    through ``grad_fn``, like PyTorch's ``SavedVariable``)."""

    __slots__ = ("storage", "numel", "dtype", "rg", "key", "grad_fn", "__weakref__")

    def __init__(self, sim: Sim, numel: Bytes, dtype: str, rg: bool, category: str) -> None:
        self.storage = Storage(sim, round_alloc(numel * DTYPE_BYTES[dtype]), category)
        self.numel = numel
        self.dtype = dtype
        self.rg = rg
        self.key = next(sim._ids)
        self.grad_fn = None

    @property
    def nbytes(self) -> Bytes:
        return self.storage.nbytes


@dataclass
class Node:
    saved: list[Storage]
    backward: Callable[[list], dict]
    output_keys: list[int]
    seq: int
    edges: list["Node"] = field(default_factory=list)
    __weakref__: Any = None
