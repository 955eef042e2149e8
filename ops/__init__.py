"""Multi-scale deformable attention: one op with reference, CPU and CUDA backends, and its module."""

from .functional import available_backends, ms_deform_attn, resolve_backend
from .module import MSDeformAttn

__all__ = ["MSDeformAttn", "available_backends", "ms_deform_attn", "resolve_backend"]
