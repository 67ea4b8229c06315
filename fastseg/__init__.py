"""fastseg: fast detection and segmentation operators for PyTorch.

``fastseg.ops`` mirrors ``torchvision.ops``; every op has native (C++/CUDA), Triton and pure-PyTorch
backends, chosen per call by ``fastseg.use_backend`` / ``FASTSEG_BACKEND`` or automatically.
"""
from fastseg import _extension  # noqa: F401  (loads the C++/CUDA ops, warns once if it cannot)
from fastseg import nn, ops, reference  # nn: drop-in layers, `fastseg.nn.ConvTranspose2d` after `import fastseg`
from fastseg.backend import BACKENDS, BackendUnavailableError, current_backend, use_backend
from fastseg.info import info

__version__ = "0.1.0"

__all__ = ["nn", "ops", "reference", "use_backend", "current_backend", "info", "BACKENDS",
           "BackendUnavailableError", "__version__"]
