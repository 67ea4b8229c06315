"""The ops the models need: all from ``fastseg.ops`` (the hot paths), plus torchvision's ImageList, the
plain container that AnchorGenerator.forward takes (torchvision's API)."""
from torchvision.models.detection.image_list import ImageList  # noqa: F401

from fastseg.ops import AnchorGenerator, BoxCoder, batched_nms, box_iou, nms, sigmoid_focal_loss  # noqa: F401


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
