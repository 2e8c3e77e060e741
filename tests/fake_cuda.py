"""A pretend CUDA device on a CPU-only machine: tensors carry a device *tag*, and an op that mixes a
'cuda'-tagged tensor with a 'cpu'-tagged one raises as CUDA would ("Expected all tensors to be on the
same device"). The data stays on the CPU, so real models, bitsandbytes and autograd run unchanged.

Tags (an attribute on the tensor; ops propagate them to their outputs):
- cuda: parameters and buffers of a model given to `move_to_cuda`, tensors made with a CUDA
  `device=` argument, `.to('cuda')` / `.cuda()`, and every result of an op with a 'cuda' input.
- cpu: tensors that crossed the Ray object store (`tag_cpu` on a payload) and `.cpu()` /
  `.to('cpu')` (a string, as our code writes it).
- none: everything else. Library code makes many tensors with `device=x.device` or `.to(x.device)`,
  and `x.device` here is the real (CPU) device; such tensors stay untagged rather than be taken for
  CPU tensors, so a mismatch inside a library is missed (those run on GPUs every day) while one in
  our glue code is caught. A CPU scalar (0-dim) mixes with CUDA tensors, as on CUDA; indices may
  live on the CPU for indexing; `copy_` crosses devices, as on CUDA."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

TAG = "_fake_device"
Tensor = torch.Tensor
# Ops that accept operands on other devices on CUDA too: their result lives where `self` does.
CROSS_DEVICE = {Tensor.__getitem__, Tensor.copy_, Tensor.tolist, Tensor.item}


class DeviceMismatch(RuntimeError):
    """What CUDA raises when one op gets tensors on two devices."""


def tag_of(t) -> str | None:
    return getattr(t, TAG, None) if isinstance(t, Tensor) else None


def _set(t, tag: str | None):
    if isinstance(t, Tensor) and tag is not None:
        try:
            setattr(t, TAG, tag)
        except (AttributeError, RuntimeError):  # some C-level tensor types refuse attributes
            pass
    return t


def tensors_in(obj):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from tensors_in(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from tensors_in(x)


def _device_kind(device) -> str | None:
    """'cuda' for any CUDA spelling; 'cpu' only for the string our code writes; None otherwise."""
    if device is None:
        return None
    if isinstance(device, int) and not isinstance(device, bool):
        return "cuda"
    if isinstance(device, torch.device):
        return "cuda" if device.type == "cuda" else None
    if isinstance(device, str):
        return "cuda" if device.startswith("cuda") else "cpu" if device == "cpu" else None
    return None


def _to_cpu(device):
    return "cpu" if _device_kind(device) == "cuda" else device


class FakeCuda(TorchFunctionMode):
    """Inside: the tagging rules above; `ops` counts the ops seen (to show the mode was on)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        self.ops += 1
        if func in (Tensor.to, Tensor.cuda, Tensor.cpu):
            return _move(func, args, kwargs)
        target = _device_kind(kwargs.get("device"))
        if "device" in kwargs:
            kwargs["device"] = _to_cpu(kwargs["device"])
        if func is Tensor.__setitem__:  # indices may be CPU tensors; the value must be where the target is
            _check(func, [args[0], *tensors_in(args[2:])])
            return func(*args, **kwargs)
        tag = tag_of(args[0]) if func in CROSS_DEVICE else _check(func, [*tensors_in(args), *tensors_in(kwargs)])
        out = func(*args, **kwargs)
        for t in tensors_in(out):
            _set(t, "cuda" if target == "cuda" else tag)
        return out


def _check(func, inputs) -> str | None:
    """The device the op runs on ('cuda', 'cpu' or None); raises on a CUDA/CPU mix."""
    tags = {tag_of(t) for t in inputs if not (tag_of(t) == "cpu" and t.dim() == 0)}
    if {"cuda", "cpu"} <= tags:
        shapes = [(tuple(t.shape), tag_of(t)) for t in inputs if tag_of(t)]
        raise DeviceMismatch(
            "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
            f"({getattr(func, '__name__', func)} on {shapes})"
        )
    return "cuda" if "cuda" in tags else "cpu" if "cpu" in tags else None


def _move(func, args, kwargs):
    """.to / .cuda / .cpu: the real op with any CUDA target replaced by the CPU; a move to the other
    device returns a new tensor (a differentiable clone), as a real copy between devices does."""
    t = args[0]
    if func is Tensor.to:
        raw = kwargs.get("device", args[1] if len(args) > 1 else None)
        kind = tag_of(raw) if isinstance(raw, Tensor) else _device_kind(raw)
        rest = [a if isinstance(a, (Tensor, torch.dtype)) else _to_cpu(a) for a in args[1:]]
        out = Tensor.to(t, *rest, **{k: _to_cpu(v) if k == "device" else v for k, v in kwargs.items()})
    else:
        kind = "cuda" if func is Tensor.cuda else "cpu"
        out = t if func is Tensor.cuda else Tensor.cpu(t)
    if kind is None or kind == tag_of(t):
        return _set(out, tag_of(t))
    return _set(out.clone() if out is t else out, kind)


def move_to_cuda(*modules) -> None:
    """Tag every parameter and buffer as on the (pretend) CUDA device, as module.to('cuda') would put them."""
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            _set(t, "cuda")


def tag_cpu(obj):
    """Tag a payload's tensors (a Rollout, a list of them, a tensor) as CPU tensors: what crosses actors."""
    if isinstance(obj, (list, tuple)):
        for x in obj:
            tag_cpu(x)
    elif isinstance(obj, Tensor):
        _set(obj, "cpu")
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            tag_cpu(getattr(obj, name))
    return obj
