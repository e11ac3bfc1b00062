"""Data for a run: built-in datasets and `data._target_`, image folders, preprocessing presets and
augmentation, the shuffled global batches, and the toy text task.

datasets.py (build_data, loaders, DataBundle), image_files.py, preprocess.py (presets, the weights'
own transforms, mixup/cutmix), batches.py (ShuffledBatches: one order for every process), toy_text.py.

May import schema, build, sources (a weights enum's transforms) and the shared modules; never
mapping, tuning, training or run.
"""
