"""deo: Dimer-Enhanced Optimization for PyTorch.

``deo.DEO`` wraps any ``torch.optim`` optimizer; ``deo.DEOConfig`` holds its settings and
``deo.recommended(goal)`` the keyword arguments we recommend for a goal; ``deo.hessian`` gives
exact Hessian ground truth for checking the curvature estimate.
"""

from . import hessian
from .checkpoint import base_state_dict
from .config import DEOConfig, recommended
from .optimizer import DEO
from .state import DEOState

__version__ = "0.1.0"
__all__ = ["DEO", "DEOConfig", "DEOState", "base_state_dict", "hessian", "recommended",
           "__version__"]
