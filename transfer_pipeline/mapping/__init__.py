"""Which source tensor goes into which target tensor: the plan, computed from names and shapes alone.

plan.py (the LoadPlan), rules.py and op_specs.py (rules and their ops, torch-free), prefixes.py
(`module.` / `_orig_mod.` ...), nested.py (which nested dict), apply.py and op_kernels.py (the only
code here that touches tensor data), report.py (the load table and load_report.json), suggest.py
(rules written from the module trees), verify.py, verify_tensors.py and pairs.py (proving a load).

May import schema, sources, build, model_io and the shared modules; never training, data, tuning or
run: a plan must be computable, and testable, without any of them.
"""
