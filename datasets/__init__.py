"""Dataset loaders, transforms, batch collation and synthetic-data generators.

Submodules are imported explicitly (``datasets.coco``, ``datasets.nuscenes``, ...) so that a COCO user
does not pay for the nuScenes dependencies and vice versa.
"""
