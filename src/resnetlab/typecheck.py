"""Options checked against the type annotations of what takes them.

``--model-arg`` and ``--recipe-arg`` values arrive as whatever JSON made of the text; a value of the
wrong kind (``nesterov="maybe"``) would otherwise be taken as true, or fail deep inside a forward pass.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence


@functools.lru_cache(maxsize=None)
def _hints(target: Callable) -> dict[str, object]:
    return typing.get_type_hints(target)


def check_types(target: Callable, values: Mapping[str, object]) -> None:
    """Raise ``ValueError`` naming the first of ``values`` whose value is not of the type ``target``'s
    annotation for it says (a function's parameters or a dataclass's fields). Names without an
    annotation, and annotations other than bool, int, float, str, None, tuples and sequences of
    those and their unions, are left to ``target``."""
    hints = _hints(target)
    for name, value in values.items():
        hint = hints.get(name)
        if hint is not None and not _fits(value, hint):
            raise ValueError(f"{name} must be {_describe(hint)}, not {value!r}")


def _fits(value: object, hint: object) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # a whole number is a number too
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    return True


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
    return str(hint)
