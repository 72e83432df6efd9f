"""mmsegmentation plugin: ``FusedDAHead``, mmseg's ``DAHead`` with PAM and CAM on danet_ops.

Importing this module needs mmsegmentation (1.x); importing ``danet_ops`` never does. It
registers ``FusedDAHead`` in mmseg's ``MODELS`` registry, so a stock DANet config needs two
more lines::

    custom_imports = dict(imports=["danet_ops.mmseg"], allow_failed_imports=False)
    model = dict(decode_head=dict(type="FusedDAHead"))

The head keeps mmseg's state_dict keys (``pam.query_project``, ``pam.gamma.scale``, ...), so
mmseg's DANet checkpoints load unchanged, and everything but the attention (convolutions,
classifiers, losses, ``predict``) is mmseg's own code. ``attention_backend`` in the head's
config picks the danet_ops backend (default ``"auto"``).
"""
from mmseg.models.decode_heads.da_head import DAHead
from mmseg.registry import MODELS

from danet_ops.modules import CAM, PAM


@MODELS.register_module()
class FusedDAHead(DAHead):
    """DANet's head (``DAHead``) with danet_ops' fused position and channel attention.

    Args:
        pam_channels (int): The channels of Position Attention Module(PAM).
        attention_backend (str): danet_ops backend of PAM and CAM: ``"auto"`` (default),
            ``"triton"``, ``"cuda"``, ``"chunked"`` or ``"eager"`` (mmseg's math).
        **kwargs: as for ``DAHead`` / ``BaseDecodeHead``.
    """

    def __init__(self, pam_channels, attention_backend='auto', **kwargs):
        super().__init__(pam_channels=pam_channels, **kwargs)
        self.attention_backend = attention_backend
        # Same parameter names and shapes as mmseg's PAM/CAM (1x1 convs with bias, a 0-dim
        # gamma.scale initialised to 0), so state_dicts are interchangeable.
        self.pam = PAM(self.channels, pam_channels, backend=attention_backend)
        self.cam = CAM(backend=attention_backend)
