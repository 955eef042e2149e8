"""Multi-scale deformable attention and modulated deformable convolution (DCNv2): ops with reference, CPU
and CUDA backends, and their modules."""

from .deform_conv import ModulatedDeformConv2d, deform_conv2d, resolve_deform_conv_backend
from .functional import available_backends, ms_deform_attn, resolve_backend
from .module import MSDeformAttn, init_deformable_attention

__all__ = [
    "MSDeformAttn",
    "ModulatedDeformConv2d",
    "available_backends",
    "deform_conv2d",
    "init_deformable_attention",
    "ms_deform_attn",
    "resolve_backend",
    "resolve_deform_conv_backend",
]
