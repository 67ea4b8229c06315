"""The ops the models need, from ``fastseg.ops`` when it has them, else torchvision's equivalents.

The torchvision fallback is temporary: it goes away once fastseg.ops.sigmoid_focal_loss,
AnchorGenerator, BoxCoder and box_iou land (they are being written on other branches). Models import
these names only from here or from fastseg.ops, so switching is this one file.
"""
import fastseg.ops as _fops
from fastseg.ops import batched_nms, nms  # noqa: F401  (fastseg's own, always present)

try:
    from fastseg.ops import sigmoid_focal_loss
except ImportError:
    from torchvision.ops import sigmoid_focal_loss  # noqa: F401

try:
    from fastseg.ops import AnchorGenerator
except ImportError:
    from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: F401

try:
    from fastseg.ops import BoxCoder
except ImportError:
    from torchvision.models.detection._utils import BoxCoder  # noqa: F401

try:
    from fastseg.ops import box_iou
except ImportError:
    from torchvision.ops import box_iou  # noqa: F401

try:  # ImageList is the container AnchorGenerator.forward expects (torchvision's API)
    from fastseg.ops import ImageList
except ImportError:
    from torchvision.models.detection.image_list import ImageList  # noqa: F401


def encode_boxes(coder, gt_boxes, anchors):
    """Regression targets of ``gt_boxes`` [N,4] relative to ``anchors`` [N,4]."""
    if hasattr(coder, "encode_single"):
        return coder.encode_single(gt_boxes, anchors)
    return coder.encode([gt_boxes], [anchors])[0]


def decode_boxes(coder, codes, anchors):
    """Boxes [N,4] from regression ``codes`` [N,4] relative to ``anchors`` [N,4]."""
    if hasattr(coder, "decode_single"):
        return coder.decode_single(codes, anchors)
    return coder.decode(codes, [anchors]).reshape(-1, 4)


def using_fallbacks() -> list[str]:
    """Names still served by torchvision (for ``fastseg info``-style reports and tests)."""
    return [n for n in ("sigmoid_focal_loss", "AnchorGenerator", "BoxCoder", "box_iou") if not hasattr(_fops, n)]
