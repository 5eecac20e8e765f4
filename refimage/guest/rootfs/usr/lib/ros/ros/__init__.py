"""The ros CLI, the service starter and cloud-init of the reference OS."""

from __future__ import annotations

import importlib
from types import ModuleType


class _Lazy(ModuleType):
    def __getattr__(self, attr: str) -> object:  # not typing.Any: 90 ms to import under TCG
        # import_module holds Python's import lock: threads that race here all get the
        # whole module (importlib's LazyLoader is not thread-safe before Python 3.12)
        return getattr(importlib.import_module(self.__name__), attr)


def lazy(name: str) -> ModuleType:
    """`name`, imported on first use. Every service of the boot is a `ros` command, and
    under emulation importing all of ros costs about a second per command."""
    return _Lazy(name)
