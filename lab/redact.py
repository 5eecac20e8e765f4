"""Secrets the lab knows, kept out of every piece of evidence it writes.

Console logs, kept artifacts and error messages are evidence: they are attached to
reports and uploaded by CI. Whatever the lab hands a guest or a platform that is not for
readers (the per-run console password on the kernel command line, credentials, values a
cloud-config names as secret) is registered here and replaced by `[redacted: WHAT]` at
the point of writing, so no later step has to remember it.
"""

from __future__ import annotations

import re
import threading
from typing import Any

MIN_SECRET_LEN = 6  # shorter values would redact ordinary words; none of ours are that short
# cloud-config keys whose values are secret wherever they appear (environment, services)
SECRET_KEY_RE = re.compile(r"pass(word|wd)?|secret|token|private|credential|api[_-]?key",
                           re.I)

_lock = threading.Lock()
_known: dict[str, str] = {}  # secret value -> what it is
_pattern: re.Pattern[str] | None = None


def keep_secret(value: str, what: str) -> None:
    """From now on, `value` never appears in what the lab writes."""
    global _pattern
    if len(value) < MIN_SECRET_LEN:
        return
    with _lock:
        if value in _known:
            return
        _known[value] = what
        # longest first: a secret that contains another is replaced whole
        ordered = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in ordered))


def redact(text: str) -> str:
    pattern = _pattern
    if pattern is None:
        return text
    return pattern.sub(lambda m: f"[redacted: {_known[m.group(0)]}]", text)


def redact_bytes(data: bytes) -> bytes:
    return redact(data.decode("utf-8", errors="surrogateescape")).encode(
        "utf-8", errors="surrogateescape")


def keep_cloud_config_secrets(data: Any, path: str = "") -> None:
    """Register the values a cloud-config holds under secret-sounding keys.

    `rancher.environment: {DB_PASSWORD: x}`, a service's `environment: [API_TOKEN=x]`.
    """
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, str | int) and SECRET_KEY_RE.search(str(key)):
                keep_secret(str(value), where)
            else:
                keep_cloud_config_secrets(value, where)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, str) and "=" in item:
                key, _, value = item.partition("=")
                if SECRET_KEY_RE.search(key):
                    keep_secret(value, f"{path}.{key}")
            else:
                keep_cloud_config_secrets(item, path)
