"""deo: Dimer-Enhanced Optimization for PyTorch.

``deo.DEO`` wraps any ``torch.optim`` optimizer; ``deo.hessian`` gives exact Hessian ground
truth for checking the curvature estimate.
"""

from . import hessian
from .checkpoint import base_state_dict
from .optimizer import DEO

__version__ = "0.1.0"
__all__ = ["DEO", "base_state_dict", "hessian", "__version__"]
