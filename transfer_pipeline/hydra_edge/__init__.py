"""Hydra's edge: the callbacks conf/config.yaml installs (the run-folder guard, the sweep summary) and
the sweep summary itself. With schema/ and run.py, the only place that knows about Hydra.

May import run/, training/ (the plot helpers), schema/ and the shared modules; nothing in the package
imports hydra_edge/.
"""
