"""Where weights come from: checkpoint files and folders of every supported format -> one flat
`SourceWeights` ({name: tensor}, read lazily, memory-mapped where the format allows).

read.py (formats, nested dicts, source.model), torchvision_weights.py (source.weights enums), safe_load.py (weights_only unpickling and
what it lets through), safetensors_header.py (names, shapes and dtypes without reading data),
inspect_checkpoint.py (`python -m transfer_pipeline.inspect`), hub.py (`hf://` and `timm://` paths -> files in the
Hugging Face cache, with the commit and hashes for summary.json).

May import schema, build and the shared modules (errors, names, files, tables, tensor_meta); never
mapping, tuning, data, training or run.
"""
