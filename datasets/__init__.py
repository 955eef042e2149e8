"""Dataset loaders, transforms, batch collation and synthetic-data generators.

Submodules are imported explicitly (``datasets.coco``, ``datasets.nuscenes``, ...) so that a COCO user
does not pay for the nuScenes dependencies and vice versa.
"""

#: Marks this package as deformbev's (another top-level ``datasets``, e.g. Hugging Face's, may shadow it;
#: see :func:`detr2d.runtime.tasks.require_project_datasets`).
IS_DEFORMBEV = True
