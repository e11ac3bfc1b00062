"""What trains and how fast: freezing and its schedule, BatchNorm policy, parameter groups, LR schedules.

freezing.py (selectors -> requires_grad, unfreeze events), events.py (the event and its triggers),
batchnorm.py (freeze.bn), param_groups.py (optim.groups, layer decay, no_decay -> optimizer groups),
lr_schedule.py (warmup, cosine, ... per group).

May import schema, selectors and the shared modules only; the training loop calls into tuning, never
the other way round.
"""
