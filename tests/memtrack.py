"""A torch dispatch mode that tracks the live bytes (and their peak) of the tensors an op makes,
for memory tests that must not depend on the allocator: count(t) picks the tensors that matter."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self, count: Callable[[torch.Tensor], bool], ignore: set[int] = frozenset()):
        super().__init__()
        self.count, self.ignore = count, ignore  # ignore: storages never counted (e.g. model weights)
        self.owners: dict[int, int] = {}  # storage pointer -> live tensors on it
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def _release(self, ptr: int) -> None:
        self.owners[ptr] -= 1
        if self.owners[ptr] == 0:
            self.live -= self.sizes.pop(ptr)
            del self.owners[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or not self.count(t):
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in self.ignore:
                continue
            if ptr not in self.owners:
                self.owners[ptr], self.sizes[ptr] = 0, t.untyped_storage().nbytes()
                self.live += self.sizes[ptr]
                self.peak = max(self.peak, self.live)
            self.owners[ptr] += 1
            weakref.finalize(t, self._release, ptr)
        return out
