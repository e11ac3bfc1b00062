"""The ${...} resolvers conf/ uses (registered by schema.register_configs): Hydra's edge, like run.py.

`fresh_dir` names the default run folders; `job_device` divides GPUs between the jobs of a
parallel sweep (conf/hydra/launcher/parallel.yaml).
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError


def fresh_dir(path: str) -> str:
    """`${fresh_dir:outputs/...}`: the folder itself, or `<folder>_2`, `_3` ... when a run started in the
    same second already has it (the default run folders are named by the second). The folder is made
    here, so two runs starting at the same moment cannot both take it."""
    from pathlib import Path

    candidate, k = path, 2
    while True:
        try:
            Path(candidate).mkdir(parents=True)
            return candidate
        except FileExistsError:
            candidate, k = f"{path}_{k}", k + 1


def job_device(job_num: Any = None) -> str:
    """`device=${job_device:}`: job k of a parallel sweep on cuda:(k mod the GPUs here), or cpu."""
    import os

    if job_num is None:
        from hydra.core.hydra_config import HydraConfig

        job_num = HydraConfig.get().job.get("num", 0) if HydraConfig.initialized() else 0

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = len([d for d in visible.split(",") if d.strip()])
    else:
        import torch  # only a sweep that asks for it pays the import

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        k = int(job_num)
    except (TypeError, ValueError):
        raise UserError(f"device=${{job_device:...}}: got {job_num!r}; write it as device='${{job_device:}}'.") from None
    return f"cuda:{k % count}" if count else "cpu"
