"""A run's life, top to bottom: claim the run folder, check the config, run the mode's steps, record the ending.

lifecycle.py  run_job / run: the summary.json that says `running` first and how it ended last
signals.py    Ctrl-C, SIGTERM and trainer.max_minutes during a run (StopSignals, TimeLimit)
recipe.py     the steps of each mode (STEPS): setup, plan, load, tune, data, verify, train
state.py      `Run`: what the steps share
load_aids.py  the load's aids: mapping.rules_file, suggested rules, verify
endings.py    the steps that end a mode with its files: planned, exported, evaluated, predicted
folder.py     which folders may be a run folder, its lock, clean-up of this tool's own temp files
provenance.py source hashes, git state, package versions

May import every stage below it (schema, sources, mapping, tuning, data, training, api, build and the
shared modules); nothing in the package imports run/ except hydra_edge/.
"""
