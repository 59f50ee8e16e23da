"""Registry `.pt` files read without running them: torch's weights-only loader, model layers only.

A `.pt` file is a pickle, and unpickling calls whatever callables the file names. The registry
is writable by anyone who can reach it, so a champion's weights are checked before anything
loads them (`load_checkpoint`): the pickle may name tensors, plain data and the classes of the
model's own layers, and may only make those layers the way `torch.save` does (an empty object
whose state is then set), never call one (a layer's constructor can read files or `eval` its
config). A file that does anything else is refused (`UnsafeWeights`) before any of it runs.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

LAYER_MODULES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks.")
"""Where the classes that a checkpoint may name live: torch's layers, ultralytics' layers and
its task models (DetectionModel)."""

_VALUES = {
    "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "NONE", "NEWTRUE", "NEWFALSE",
    "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "LONG1",
}  # fmt: skip
"""Pickle opcodes that push one plain value (the ones torch's weights-only loader reads)."""


class UnsafeWeights(ValueError):
    """A .pt file names or calls something other than tensors, plain data and model layers."""


class _Global(str):
    """A class or function a pickle named, on the simulated stack."""


def _layer_class(name: str) -> type | None:
    """The class a checkpoint names as `module.Class`, if it is a torch module class from
    `LAYER_MODULES` (whose pickled state is only data); else None."""
    import importlib

    import torch

    module, _, attr = name.rpartition(".")
    if not f"{module}.".startswith(LAYER_MODULES):
        return None
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) and issubclass(found, torch.nn.Module) else None


def _called(pickle: bytes) -> list[str]:
    """What the pickle would call, in order, other than the functions torch's weights-only
    loader allows by default: a layer class called, or a callable that is not a named global.

    Walks the opcodes (`pickletools` parses, it runs nothing) over a stack of placeholders."""
    mark = object()
    stack: list = []
    memo: dict = {}
    called: list[str] = []

    def pop_to_mark() -> None:
        while stack.pop() is not mark:
            pass

    for op, arg, _ in pickletools.genops(io.BytesIO(pickle)):
        match op.name:
            case "GLOBAL":
                stack.append(_Global(arg.replace(" ", ".")))
            case "BINPUT" | "LONG_BINPUT":
                memo[arg] = stack[-1]
            case "BINGET" | "LONG_BINGET":
                stack.append(memo[arg])
            case "MARK":
                stack.append(mark)
            case "TUPLE":
                pop_to_mark()
                stack.append(None)
            case "TUPLE1" | "TUPLE2" | "TUPLE3":
                del stack[-int(op.name[-1]) :]
                stack.append(None)
            case "BINPERSID":
                stack[-1] = None  # a tensor's storage, by key
            case "APPEND" | "BUILD":
                stack.pop()
            case "SETITEM":
                del stack[-2:]
            case "APPENDS" | "SETITEMS":
                pop_to_mark()
            case "REDUCE" | "NEWOBJ":
                stack.pop()  # the arguments
                func = stack.pop()
                if not isinstance(func, _Global):
                    called.append("an object it made")
                elif op.name == "REDUCE" and _layer_class(func) is not None:
                    called.append(f"{func}(...)")
                stack.append(None)
            case "PROTO" | "STOP":
                pass
            case name if name in _VALUES:
                stack.append(None)
            case name:
                called.append(f"pickle opcode {name}")
                break
    return called


def load_checkpoint(weights: Path) -> dict:
    """An ultralytics checkpoint, unpickled by torch's weights-only loader with the model's layer
    classes allowed and nothing else. A file from the registry that names any other global (a
    code payload, say), or calls a layer class, is refused before anything in it runs
    (`UnsafeWeights`); one that passes can then be handed to ultralytics."""
    import torch
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    try:
        names = get_unsafe_globals_in_checkpoint(weights)  # reads the pickle, calls nothing
        called = _called(torch._C.PyTorchFileReader(str(weights)).get_record("data.pkl"))
    except (ValueError, RuntimeError, IndexError, KeyError, pickle.UnpicklingError) as exc:
        raise UnsafeWeights(
            f"refused to load {weights}: not a torch.save checkpoint ({exc})"
        ) from exc
    classes = {name: _layer_class(name) for name in names}
    refused = sorted(name for name, found in classes.items() if found is None)
    if refused:
        raise UnsafeWeights(
            f"refused to load {weights}: it names {', '.join(refused)}, which no model layer is "
            "(loading a pickled file runs what it names)"
        )
    if called:
        raise UnsafeWeights(
            f"refused to load {weights}: it calls {', '.join(called[:3])} (a checkpoint only "
            "builds layers from their saved state; calling one runs its code)"
        )
    with safe_globals(list(classes.values())):
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise UnsafeWeights(f"{weights}: not an ultralytics checkpoint (a dict)")
    return checkpoint
