"""Multi-scale deformable attention: one op with reference, CPU and CUDA backends, and its module."""

from .functional import ms_deform_attn
from .module import MSDeformAttn

__all__ = ["MSDeformAttn", "ms_deform_attn"]
