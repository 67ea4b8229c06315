"""The memory fastseg's CPU kernels keep between calls, and how to free it."""
import torch

from fastseg import _extension


def empty_cache() -> int:
    """Frees what the native CPU kernels keep between calls; returns the bytes freed. Like
    ``torch.cuda.empty_cache``, it changes no result, only memory use and the next calls' speed.

    What is kept: the wide ``conv_transpose2d`` layers, which run oneDNN's deconvolution as PyTorch does,
    keep the weight in oneDNN's packed layout once the same weight comes back unchanged, saving the
    reorder PyTorch pays on every call (at most 64 weights, 1 GiB, about twice each weight). A packed
    weight is used only while the weight's bytes equal a copy taken when it was packed, so every write is
    seen, ``.data`` and NumPy included. ``FASTSEG_WEIGHT_CACHE=0`` switches it off. The layers that run
    Winograd's algorithm (3x3 stride 1 from 96 channels, 4x4 stride 2 from 128, fp32) keep a workspace per
    calling thread (24 MB of tiles and, for an uncached weight, its transform); this frees the calling
    thread's.

    Example:
        >>> fastseg.ops.empty_cache() >= 0
        True
    """
    if not _extension.loaded():
        return 0
    return torch.ops.fastseg.empty_cache()
