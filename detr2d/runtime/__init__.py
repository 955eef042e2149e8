"""The task-neutral runtime shared by every detector: process group, run folder, config dump, logging,
seeding, mixed precision, atomic files, training checkpoints with exact resume, optimizer and schedules,
ONE ``fit`` loop and ONE evaluation/prediction driver.

A detector plugs in through a :class:`detr2d.runtime.task.Task` (build model, criterion, datasets,
batch -> device, inference, scoring, drawing); ``tools/train.py``, ``tools/test.py`` and
``tools/predict.py`` pick the task named by the config's ``task`` from :data:`detr2d.runtime.tasks.TASKS`.
Nothing here imports a detector.
"""
