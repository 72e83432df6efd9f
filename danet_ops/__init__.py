"""danet_ops: fused, memory-efficient kernels for DANet's position and channel attention."""
from danet_ops.backends import BACKENDS, BackendUnavailableError, available_backends
from danet_ops.functional import AttentionMemoryError, channel_attention, position_attention
from danet_ops.modules import CAM, PAM, Scale, replace_attention
from danet_ops.reference import channel_attention_reference, position_attention_reference

__version__ = "0.1.0"


def onnx_translation_table() -> dict:
    """danet_ops' custom ops as ONNX Script functions (the eager math), for
    ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``. Needs onnxscript."""
    from danet_ops.onnx import translation_table

    return translation_table()


__all__ = [
    "AttentionMemoryError",
    "BACKENDS",
    "BackendUnavailableError",
    "CAM",
    "PAM",
    "Scale",
    "available_backends",
    "channel_attention",
    "channel_attention_reference",
    "onnx_translation_table",
    "position_attention",
    "position_attention_reference",
    "replace_attention",
]
