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
        self.region: _CheckpointFrame | None = None  # the checkpointed forward being run
        self.recomputing: _CheckpointFrame | None = None  # the checkpoint being recomputed in backward
        self.grad_hook: Callable[[str], None] | None = None  # called after a parameter's .grad is produced
        # gradient accumulation, a micro-step after the first: every .grad already exists (counted in
        # the base) and each new gradient is added in place (a temporary of its size while adding)
        self.grads_resident = False
        # autocast's weight-cast cache (autocast_mode.cpp ``cached_cast``): the low-precision copy of
        # each trainable fp32 leaf, made once per autocast region and held until the region exits
        self.autocast_cache: dict[str, "Tensor"] = {}

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
             inputs: list["Tensor"], holders: int | None = None) -> "Node":
        """Record a backward node. The node holds the storages it saves and the nodes of its inputs
        (the graph's edges); outputs hold the node. A branch whose outputs all die is freed with its
        saved tensors, as in PyTorch. ``holders``: how many ``SavedVariable``s the op really has
        (default: the tensors in ``saved``), counting those that cost no memory (a parameter, a
        wrapped Python scalar): under checkpointing each is a holder whose unpack triggers the
        recomputation, and the count decides where the recomputation stops."""
        storages = [t.storage for t in saved if t is not None]
        n_holders = len(storages) if holders is None else holders
        keep = [] if (self.discard_saved or self.recomputing is not None) else storages
        edges = [t.grad_fn for t in inputs if t is not None and getattr(t, "grad_fn", None) is not None]
        n = Node(saved=keep, backward=backward, output_keys=[o.key for o in outputs], seq=next(self._ids), edges=edges)
        self.nodes.append(weakref.ref(n))
        for o in outputs:
            o.grad_fn = n
        if self.region is not None:  # a checkpointed forward: the node keeps a holder per saved tensor
            self.region.record(n, n_holders)
        elif self.recomputing is not None:  # the recomputation hands each saved tensor to its original node
            self.recomputing.repack(n, storages, n_holders)
        return n

    def save_more(self, node: "Node", t: "Tensor") -> None:
        """A tensor an op's backward node also saves (beyond what :meth:`node` was given)."""
        if self.region is not None:
            self.region.record(node, 1, new=False)
        elif self.recomputing is not None:
            self.recomputing.repack(node, [t.storage], 1, new=False)
        elif not self.discard_saved:
            node.saved.append(t.storage)

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
                node.frame = None
                continue
            if node.frame is not None and not node.frame.recomputed:  # first unpack of a saved tensor
                self._recompute(node.frame)
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
            node.frame = None
            del node
        return grads

    def checkpoint(self, fn: Callable[["Tensor"], "Tensor"], x: "Tensor") -> "Tensor":
        """``torch.utils.checkpoint(fn, x, use_reentrant=False)`` (torch/utils/checkpoint.py,
        ``_checkpoint_hook`` / ``_recomputation_hook``): the forward builds the region's graph as
        usual but every saved tensor is replaced by a holder (nothing kept), and the frame keeps the
        input. In backward, the first node of the region that unpacks a saved tensor triggers the
        recomputation (:meth:`_recompute`); nodes that save nothing (a residual ``add``, a frozen
        linear) run before it. The recomputation stops early, as soon as it has re-saved as many
        tensors as the forward saved; each recomputed tensor goes to its original node and is
        freed when that node has run. Gradients reach every tensor the region read."""
        frame = _CheckpointFrame(fn, x)
        outer, self.region = self.region, frame
        self.discard_saved = True
        try:
            out = fn(x)
        finally:
            self.discard_saved = False
            self.region = outer
        return out

    def _recompute(self, frame: "_CheckpointFrame") -> None:
        frame.recomputed = True
        outer_nodes, self.nodes = self.nodes, []  # the recomputation's own graph is not kept
        self.recomputing = frame
        # the recomputation re-enters autocast (checkpoint restores its state): a cache of its own,
        # cleared when it exits (early, at _StopRecomputation, too)
        outer_cache, self.autocast_cache = self.autocast_cache, {}
        try:
            out = frame.fn(frame.input)
            del out
        except _StopRecomputation:
            pass
        finally:
            self.recomputing = None
            self.nodes = outer_nodes
            self.autocast_cache = outer_cache

    def param_grad(self, key: str, numel: int, dtype: str) -> None:
        """``.grad`` of a trainable parameter: created by the first node that reaches it, then
        accumulated in place (a temporary of the same size exists while adding)."""
        if key in self.param_grads or self.grads_resident:
            tmp = self.tensor(numel, dtype, category="gradients")
            self.note_peak()
            del tmp
        else:
            self.param_grads[key] = self.tensor(numel, dtype, category="gradients")
        if self.grad_hook is not None:  # a data-parallel strategy takes the gradient (bucket, shard)
            self.grad_hook(key)


class _StopRecomputation(Exception):
    """``_StopRecomputationError``: raised once the recomputation has re-saved every tensor."""


class _CheckpointFrame:
    """``_CheckpointFrame``: the region's function and input, the region's nodes in creation order
    (weakly, as ``weak_holders``) and how many tensors they saved."""

    __slots__ = ("fn", "input", "nodes", "n_saved", "recomputed", "counter", "repacked", "__weakref__")

    def __init__(self, fn: Callable, x: "Tensor") -> None:
        self.fn, self.input = fn, x
        self.nodes: list[weakref.ref] = []
        self.n_saved = 0
        self.recomputed = False
        self.counter = 0  # nodes seen by the recomputation
        self.repacked = 0  # saved tensors re-saved by the recomputation

    def record(self, node: "Node", n_saved: int, new: bool = True) -> None:
        if new:
            self.nodes.append(weakref.ref(node))
        if n_saved:
            self.n_saved += n_saved
            node.frame = self  # the holders' unpack hooks keep the frame (and its input) alive

    def repack(self, node: "Node", storages: list, n_holders: int, new: bool = True) -> None:
        if new:
            idx = self.counter
            self.counter += 1
            ref = self.nodes[idx] if idx < len(self.nodes) else None
            node.orig = ref() if ref is not None else None
        orig = node.orig
        if not n_holders:
            return
        if orig is not None and storages:  # a holder whose node died (a dead branch) takes nothing
            orig.saved.extend(storages)
        self.repacked += n_holders
        if self.repacked >= self.n_saved:
            raise _StopRecomputation


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
    frame: Any = None  # the checkpoint frame whose recomputation provides this node's saved tensors
    orig: Any = None  # during a recomputation: the original node this one stands for
    __weakref__: Any = None
