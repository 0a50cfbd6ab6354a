"""deo: Dimer-Enhanced Optimization for PyTorch.

``deo.DEO`` wraps any ``torch.optim`` optimizer; ``deo.hessian`` gives exact Hessian ground
truth for checking the curvature estimate.
"""

from . import hessian
from .optimizer import DEO

__version__ = "0.1.0"
__all__ = ["DEO", "hessian", "__version__"]
