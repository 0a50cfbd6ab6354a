import pytest
import torch

from deo.corrections import paper_correction_
from deo.dimer import normalize


def two_tensor_vector(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]


def flat(xs):
    return torch.cat([x.reshape(-1) for x in xs])


@pytest.mark.parametrize("alpha", [0.0, 1.0, 5.0, -2.0])
def test_paper_correction_scales_the_component_along_n(alpha):
    grads, direction = two_tensor_vector(0), normalize(two_tensor_vector(1))
    g, n = flat(grads), flat(direction)
    projection = paper_correction_(grads, direction, alpha)
    torch.testing.assert_close(projection, g @ n)
    corrected = flat(grads)
    torch.testing.assert_close(corrected @ n, (1 - alpha) * (g @ n), rtol=1e-5, atol=1e-6)
    # the part orthogonal to N is untouched
    torch.testing.assert_close(corrected - (corrected @ n) * n, g - (g @ n) * n,
                               rtol=1e-5, atol=1e-6)


def test_paper_correction_keeps_low_precision_gradients_in_their_dtype():
    grads = [g.to(torch.bfloat16) for g in two_tensor_vector(0)]
    direction = normalize(two_tensor_vector(1))
    paper_correction_(grads, direction, 1.0)
    assert all(g.dtype == torch.bfloat16 for g in grads)
    assert abs(float(flat(grads).float() @ flat(direction))) < 0.05
