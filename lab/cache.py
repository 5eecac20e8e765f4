"""Where roslab keeps what it can make again: packages, images, unpacked SD cards."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("ROSLAB_CACHE", Path.home() / ".cache" / "roslab"))
