"""The ``cuda`` backend: the compiled extension from ``csrc/`` (contract: ``danet_ops.backends``)."""
from __future__ import annotations

from typing import Optional

import torch


def unavailable_reason(device: torch.device) -> Optional[str]:
    return "the CUDA extension is not part of this build yet"
