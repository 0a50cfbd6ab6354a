"""The cheap (non-probe) step must not synchronise with the host.

On CPU there is no device to wait for, so the check mocks the ways Python code forces a
sync: reading a tensor's value (.item(), float(), int(), bool(), .tolist()). The base
optimizer's own step is replaced by a no-op: torch's CPU optimizers read their step counter
with .item(), which is the base's business, not DEO's.
"""

import pytest
import torch

import deo
from helpers import MLP, make_closure

SYNCING_METHODS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__"]


@pytest.fixture
def forbid_host_sync(monkeypatch):
    def install():
        for name in SYNCING_METHODS:
            def refuse(*args, _name=name, **kwargs):
                raise AssertionError(f"host sync in the cheap step: Tensor.{_name}")
            monkeypatch.setattr(torch.Tensor, name, refuse)
    return install


@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("max_grad_norm", [None, 1.0])
def test_cheap_step_reads_no_tensor_value(forbid_host_sync, scope, max_grad_norm):
    torch.manual_seed(0)
    model = MLP(batchnorm=False)
    opt = deo.DEO(model.parameters(), lr=1e-2, interval=10, scope=scope,
                  max_grad_norm=max_grad_norm)
    opt.step(make_closure(model, opt, 0))  # probe step: may sync (once, by design)
    make_closure(model, opt, 1)()
    before = [p.grad.clone() for p in model.parameters()]
    opt.base.step = lambda closure=None: None
    forbid_host_sync()
    opt.step()
    # the correction did run
    assert any(not torch.equal(b, p.grad) for b, p in zip(before, model.parameters()))


def test_the_sync_detector_catches_a_sync(forbid_host_sync):
    forbid_host_sync()
    with pytest.raises(AssertionError, match="host sync"):
        float(torch.ones(()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA sync detector needs CUDA")
@pytest.mark.parametrize("direction_dtype", [None, torch.bfloat16])
def test_cheap_step_does_not_sync_with_a_cuda_device(direction_dtype):
    torch.manual_seed(0)
    model = MLP(batchnorm=False).cuda()
    x, y = torch.randn(32, 6, device="cuda"), torch.randn(32, 1, device="cuda")
    opt = deo.DEO(model.parameters(), lr=1e-2, fused=True, max_grad_norm=1.0,
                  direction_dtype=direction_dtype)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)  # probe step: may sync (once, by design)
    closure()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()  # the whole cheap step, fused AdamW included
    finally:
        torch.cuda.set_sync_debug_mode("default")
