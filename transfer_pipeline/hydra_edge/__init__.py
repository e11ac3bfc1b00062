"""Hydra's edge: the callbacks conf/config.yaml installs (the run-folder guard, the sweep summary) and
the sweep summary itself. With schema/ and run.py, the only place that knows about Hydra.

May import anything in the package; nothing in the package imports hydra_edge/.
"""
