"""A registry: named entries of one kind (sparse paths, producer folds), each registered once, looked up by name with
an error that lists what there is."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind  # what an entry is, for errors: "sparse path"

    def register(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"a {self.kind} named {name!r} is registered already")
        self[name] = entry
        return entry

    def __missing__(self, name: str) -> T:
        raise ValueError(f"unknown {self.kind} {name!r}; registered: {sorted(self)}")
