"""Layers shared by the detectors of both lines (2D and BEV), each in a module named for what it is:
``resnet`` (ResNet / ResNet-DCN backbones with torchvision's and mmdet's names, frozen batch norm,
pretrained weights), ``vovnet`` (VoVNetV2 with eSE, PETR's backbone), ``fpn`` (the FPN neck),
``transformer`` (the post-norm FFN, the deformable decoder layer), ``losses`` (focal loss), ``box_ops``
(box conversions, IoU, GIoU, inverse sigmoid) and ``padding`` (padding masks, exact padding)."""
