"""The package's environment switches (kernel variants, read at each launch)."""
from __future__ import annotations

import os


def choice(name: str, options: tuple[str, ...]) -> str:
    """The value of environment variable ``name``, one of ``options`` (the first when unset or
    empty; case and surrounding spaces ignored), else a ValueError that names the variable."""
    value = os.environ.get(name, "").strip().lower() or options[0]
    if value not in options:
        allowed = " or ".join(repr(o) for o in options)
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value
