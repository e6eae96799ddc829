"""A faster constructor for the core's frozen, slotted dataclasses.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__(self, "name", value)``, because its own ``__setattr__``
refuses. A ``CustomerState`` is built once per changed customer and batch and
a ``Touchpoint`` per event, so that cost shows in ``bench/fold.py``
(``bench/RESULTS.md`` has the figures). :func:`fast_init` replaces that
``__init__`` with one of the same signature that calls each slot's
descriptor directly, about twice as fast. Everything else stays the dataclass's:
fields, ``replace``, equality, repr, and the refusal to change an instance
once built.

Only for classes with nothing but plain init fields: no ``__post_init__``, no
``init=False`` or keyword-only fields (it refuses them, at import).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_NO_VALUE: Any = object()  # stands for "not given" where a field has a default factory


def fast_init(cls: type[T]) -> type[T]:
    """Class decorator, above ``@dataclass(frozen=True, slots=True)``."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"fast_init needs a frozen, slotted dataclass; {cls.__name__} is not one")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"fast_init cannot run {cls.__name__}.__post_init__")
    names: dict[str, Any] = {"_NO_VALUE": _NO_VALUE}
    args: list[str] = []
    body: list[str] = []
    for i, f in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        if not f.init or f.kw_only:
            raise TypeError(f"fast_init handles plain init fields only; {cls.__name__}.{f.name} is not one")
        names[f"_set{i}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            names[f"_default{i}"] = f.default
            args.append(f"{f.name}=_default{i}")
        elif f.default_factory is not dataclasses.MISSING:
            names[f"_factory{i}"] = f.default_factory
            args.append(f"{f.name}=_NO_VALUE")
            body.append(f"    if {f.name} is _NO_VALUE:\n        {f.name} = _factory{i}()")
        else:
            args.append(f.name)
        body.append(f"    _set{i}(self, {f.name})")
    source = f"def __init__(self, {', '.join(args)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    exec(source, names)  # the source is built above from the class's own field names
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
