"""Components by name: encoders, LLM backends, fusion models and selection rules register here."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> component map whose lookup error lists what is available."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        key = name.lower()

        def add(item: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            close = difflib.get_close_matches(str(name).lower(), self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; available: {self.names()}{hint}") \
                from None

    def expected(self, name: str) -> str:
        """'one of [...]', with the closest registered name when one is close: the text of an
        error about `name`."""
        close = difflib.get_close_matches(str(name).lower(), self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"one of {self.names()}{hint}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items
