"""Options checked against the type annotations of what takes them.

``--model-arg`` and ``--recipe-arg`` values arrive as whatever JSON made of the text; a value of the
wrong kind (``nesterov="maybe"``) would otherwise be taken as true, or fail deep inside a forward pass.
"""

from __future__ import annotations

import functools
import numbers
import operator
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence

# What _plain returns for a value not of the annotation's type (None is a value some annotations take).
_MISMATCH = object()


@functools.lru_cache(maxsize=None)
def _hints(target: Callable) -> dict[str, object]:
    return typing.get_type_hints(target)


def check_types(target: Callable, values: Mapping[str, object]) -> dict[str, object]:
    """Check ``values`` against ``target``'s type annotations (a function's parameters or a dataclass's
    fields) and return them as plain Python values: NumPy integers as ``int``, ranges and 1-d arrays as
    lists. Raise ``TypeError`` (as Python and PyTorch do for an argument of the wrong kind) naming the
    first value not of its annotation's type. Names without an annotation, and annotations other than
    classes, tuples, sequences and their unions, are left to ``target``: ``type[X]`` or ``Callable``, say."""
    hints = _hints(target)
    plain = dict(values)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is None:
            continue
        plain[name] = _plain(value, hint)
        if plain[name] is _MISMATCH:
            shown = repr(value) if len(repr(value)) <= 80 else f"a {type(value).__name__}"  # not a dataset's every pixel
            raise TypeError(f"{name} must be {_describe(hint)}, not {shown}")
    return plain


def is_integer(value: object) -> bool:
    """Whether ``value`` is a whole number (an ``int``, a NumPy integer), and not ``True`` or ``False``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_sequence(value: object) -> list | None:
    """The items of a tuple, list, range or 1-d array (NumPy's or PyTorch's, as Python numbers) as a
    list; ``None`` for anything else, text included."""
    if isinstance(value, (str, bytes)):
        return None
    if isinstance(value, Sequence):
        return list(value)
    if getattr(value, "ndim", None) == 1 and hasattr(value, "tolist"):
        return value.tolist()
    return None


def _plain(value: object, hint: object) -> object:
    """``value`` as the plain Python value of ``hint``'s type, or ``_MISMATCH`` if it is not of that type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            plain = _plain(value, a)
            if plain is not _MISMATCH:
                return plain
        return _MISMATCH
    if hint is type(None):
        return value if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint is int:
        return operator.index(value) if is_integer(value) else _MISMATCH
    if hint is float:  # a whole number is a number too
        return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    if origin in (tuple, list, Sequence):
        items = as_sequence(value)
        if items is None:
            return _MISMATCH
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                return _MISMATCH
            plain = [_plain(v, a) for v, a in zip(items, args)]
        else:
            plain = [_plain(v, args[0]) for v in items] if args else items
        if any(p is _MISMATCH for p in plain):
            return _MISMATCH
        return tuple(plain) if origin is tuple else plain
    if origin is None and isinstance(hint, type):  # any other class (torch.device, os.PathLike): an instance of it
        # (origin: on Python 3.10 a generic such as type[X] passes isinstance(hint, type) too)
        return value if isinstance(value, hint) else _MISMATCH
    return value


def _describe(hint: object) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null"}
    if hint in names:
        return names[hint]
    if origin in (tuple, list, Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
        return f"a list ({_describe(args[0])} each)" if args else "a list"
    if hint is os.PathLike:
        return "a path"
    if isinstance(hint, type):
        return f"a {hint.__name__}" if hint.__module__ == "builtins" else f"a {hint.__module__}.{hint.__name__}"
    return str(hint)
