"""The op layer: torch.library registration (opcheck) and torch.compile(fullgraph=True)."""
import pytest
import torch
from helpers import grad_errs, rel_err

import danet_ops
from danet_ops import ops


def test_opcheck_pam_and_cam():
    q, k = torch.randn(2, 4, 23), torch.randn(2, 4, 23)
    v, res = torch.randn(2, 8, 23, requires_grad=True), torch.randn(2, 8, 23)
    gamma = torch.tensor(0.5, requires_grad=True)
    torch.library.opcheck(ops.pam_forward, (q, k, v, gamma, res, 1.0, True, "chunked"))
    torch.library.opcheck(ops.pam_forward, (q, k, v, None, None, 0.5, False, "chunked"))
    x = (torch.randn(2, 8, 23) * 0.3).requires_grad_()
    torch.library.opcheck(ops.cam_forward, (x, gamma, "chunked"))
    torch.library.opcheck(ops.cam_forward, (x, None, "chunked"))


@pytest.mark.parametrize("backend", ["chunked", "eager"])
def test_compiled_modules_match_eager(backend):
    torch._dynamo.reset()
    pam, cam = danet_ops.PAM(32, 4, backend=backend), danet_ops.CAM(backend=backend)
    pam.gamma.scale.data.fill_(0.5)
    cam.gamma.scale.data.fill_(0.7)
    model = torch.nn.Sequential(pam, cam)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 32, 7, 9) * 0.5
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_c = compiled(x1)
    out_e = model(x2)
    assert rel_err(out_c, out_e) < 1e-5
    dout = torch.randn_like(out_e)
    out_c.backward(dout)
    grads_c = [x1.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e.backward(dout)
    grads_e = [x2.grad] + [p.grad for p in model.parameters()]
    assert max(grad_errs(grads_c, grads_e)) < 1e-5


def test_compiled_functional_without_epilogue():
    torch._dynamo.reset()
    fn = torch.compile(
        lambda q, k, v: danet_ops.position_attention(q, k, v, backend="chunked"), fullgraph=True
    )
    q, k, v = torch.randn(1, 4, 50), torch.randn(1, 4, 50), torch.randn(1, 6, 50)
    ref = danet_ops.position_attention_reference(q.double(), k.double(), v.double())
    assert rel_err(fn(q, k, v), ref) < 1e-5
