"""Record which `params.yaml` keys a pipeline step reads: a read-only proxy around a `Config`.

`recording(cfg)` returns `(proxy, keys)`. Pass the proxy wherever the `Config` would go; every value read
through it adds its dotted key path to `keys`:

- a leaf field (`cfg.train.epochs`) records `train.epochs`; a nested model (`cfg.train`) records nothing
  until something is read from it;
- methods and properties run with the proxy as `self` (`cfg.variant(name)`, `cfg.paths.model_dir(v)`),
  so the reads inside them are recorded too;
- `model_dump()` records the whole section it serialises (or each section named in `include=`);
- the `variants` mapping records `variants.<name>` per item read, and `variants` itself when iterated,
  measured or searched (the set of names is then part of what was read).

Used by tests/pipeline/test_dvc.py to compare what each step reads with what its dvc.yaml stage declares.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel


class _Proxy:
    """Stands in for a pydantic model at `path` (dotted, "" for the root) and records reads into `keys`."""

    def __init__(self, target: BaseModel, path: str, keys: set[str]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_keys", keys)

    def _child(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def __getattr__(self, name: str) -> Any:
        target = self._target
        if name in type(target).model_fields:
            return _wrap(getattr(target, name), self._child(name), self._keys)
        if name == "model_dump":
            return self._model_dump
        static = inspect.getattr_static(type(target), name, None)
        if isinstance(static, property):
            return static.fget(self)
        if inspect.isfunction(static):
            return types.MethodType(static, self)
        return getattr(target, name)

    def _model_dump(self, *args: Any, include: Any = None, **kwargs: Any) -> Any:
        sections = [self._child(name) for name in include] if include else [self._path or "<everything>"]
        self._keys.update(sections)
        return self._target.model_dump(*args, include=include, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the config is frozen")

    def __repr__(self) -> str:
        return f"<recording {self._path or 'Config'}>"


class _MappingProxy(Mapping):
    """Stands in for a `dict[str, model]` field (`variants`)."""

    def __init__(self, target: Mapping, path: str, keys: set[str]) -> None:
        self._target, self._path, self._keys = target, path, keys

    def __getitem__(self, name: str) -> Any:
        value = self._target[name]  # KeyError for unknown names, as the dict does
        return _wrap(value, f"{self._path}.{name}", self._keys)

    def __iter__(self) -> Iterator[str]:
        self._keys.add(self._path)
        return iter(self._target)

    def __len__(self) -> int:
        self._keys.add(self._path)
        return len(self._target)

    def __contains__(self, name: object) -> bool:
        self._keys.add(self._path)
        return name in self._target


def _wrap(value: Any, path: str, keys: set[str]) -> Any:
    if isinstance(value, BaseModel):
        return _Proxy(value, path, keys)
    if isinstance(value, Mapping) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return _MappingProxy(value, path, keys)
    keys.add(path)
    return value


def recording(cfg: BaseModel) -> tuple[Any, set[str]]:
    """A proxy for `cfg` and the (live) set of dotted keys read through it."""
    keys: set[str] = set()
    return _Proxy(cfg, "", keys), keys


def covering(key: str, declared: list[str]) -> str | None:
    """The declared key that covers `key` (itself or a dotted prefix of it), or None."""
    for candidate in declared:
        if key == candidate or key.startswith(candidate + "."):
            return candidate
    return None
