"""Whether a value read from JSON (a hand-edited config.json) fits a dataclass field's type."""

from __future__ import annotations

import numbers
import types
import typing
from typing import Any

import numpy as np


def type_problem(value: Any, hint: Any) -> str | None:
    """What ``value`` (from JSON or a form) should be for a field of type ``hint``, or None
    when it is that: numbers, text, true/false, lists of them, None where the field allows it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        said = [type_problem(value, a) for a in args if a is not type(None)]
        return None if None in said else " or ".join(said) + (" or null" * (type(None) in args))
    if origin in (list, tuple):
        fixed = origin is tuple and Ellipsis not in args
        if not isinstance(value, list | tuple) or (fixed and len(value) != len(args)):
            return f"a list of {len(args)}" if fixed else "a list"
        for item, item_hint in zip(value, args if fixed else [args[0]] * len(value), strict=True):
            if (problem := type_problem(item, item_hint)) is not None:
                return f"a list, each item {problem}"
        return None
    # numbers.*: numpy's scalars too (a checkpoint's config may hold them)
    checks = {bool: (bool, np.bool_), int: (numbers.Integral,), float: (numbers.Real,), str: (str,)}
    if hint not in checks:  # dicts and anything else: built as given
        return None
    boolean = isinstance(value, bool | np.bool_)
    ok = isinstance(value, checks[hint]) and (hint is bool or not boolean)
    return None if ok else {bool: "true or false", int: "a whole number", float: "a number",
                            str: "text"}[hint]  # fmt: skip
