"""The task-neutral runtime shared by every detector: process group, run folder, config dump, logging,
seeding, mixed precision, atomic files, training checkpoints with exact resume, optimizer and schedules,
ONE ``fit`` loop and ONE evaluation/prediction driver.

A detector plugs in through a :class:`detr2d.runtime.task.Task` (model side: model, criterion, weights,
batch -> device, inference) naming its benchmark family's :class:`~detr2d.runtime.task.DataSide`
(datasets, loaders, drawing) and :class:`~detr2d.runtime.task.Evaluator` (records, scoring, submission
files); ``tools/train.py``, ``tools/test.py`` and ``tools/predict.py`` pick the task named by the
config's ``task`` from :data:`detr2d.runtime.tasks.TASKS`.
Nothing here imports a detector.
"""
