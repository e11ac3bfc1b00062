"""The training loop and what surrounds it: the engine (precision, compile, DDP), fit (epochs, checkpoints,
best and EMA weights, early stopping), evaluation, prediction, loggers, curves, the task's loss and metrics.

May import data, tuning, sources, schema, build, model_io and the shared modules; never mapping, api,
run or hydra_edge.
"""
