"""DigitsCNN variants whose frozen part is not the same every time, in ways no module type shows
(importable as `cache_models` for `model._target_`), and hub caches (huggingface_hub's layout) made in a test."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transfer_pipeline.models import DigitsCNN


class _Features(DigitsCNN):
    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        return self.pool(x).flatten(1)


class FunctionalDropout(_Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.features(x), 0.3, training=self.training))


class Noisy(_Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x) + 0.1 * torch.randn(1))


class TrainBranch(_Features):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(f * 0.5 if self.training else f)


# --- Hugging Face hub caches ------------------------------------------------------------------------
# The layout huggingface_hub reads (and `hf download` writes): <cache>/models--org--name/ with blobs/<hash>
# (the file contents), refs/<branch or tag> (a commit hash) and snapshots/<commit>/<path> (a relative symlink
# to its blob). Tests point HF_HUB_CACHE at <cache> and set HF_HUB_OFFLINE=1 (hub_env): nothing is downloaded.

def _blob_bytes(content) -> bytes:
    """bytes as they are; str as UTF-8; a Path's bytes; a state dict as safetensors; a dict of plain values as JSON."""
    import json
    from collections.abc import Mapping
    from pathlib import Path

    if isinstance(content, bytes):
        return content
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, Path):
        return content.read_bytes()
    if isinstance(content, Mapping) and content and all(isinstance(v, torch.Tensor) for v in content.values()):
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in content.items()})
    if isinstance(content, Mapping):
        return json.dumps(content).encode()
    raise TypeError(f"cannot write {type(content).__name__} into a hub cache")


def write_hub_cache(cache, repo_id: str, files, revision: str | None = "main", commit: str | None = None):
    """`files` ({path in the repo: bytes | str | Path | state dict | JSON dict}) as commit `commit` of `repo_id` in
    the hub cache `cache`, with `refs/<revision>` naming it (None: no ref, only the commit). Repeat with another
    commit to add a revision; the blobs are shared. Returns the snapshot folder (commit: `.name`).

    The default commit is derived from the contents, so the same files give the same commit."""
    import hashlib
    import os
    from pathlib import Path

    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    data = {name: _blob_bytes(content) for name, content in files.items()}
    if commit is None:
        listing = "".join(f"{n} {hashlib.sha256(b).hexdigest()}\n" for n, b in sorted(data.items()))
        commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for name, blob_bytes in data.items():
        blob = repo / "blobs" / hashlib.sha256(blob_bytes).hexdigest()  # an LFS file's etag is its SHA-256
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(blob_bytes)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    snapshot.mkdir(parents=True, exist_ok=True)
    if revision is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)  # as huggingface_hub writes it: no newline
    return snapshot


def timm_hub_cache(cache, name: str = "resnet18.a1_in1k", seed: int = 0, **kwargs):
    """The hub repo timm's pretrained_cfg names for `name` (e.g. timm/resnet18.a1_in1k), holding model.safetensors
    of `timm.create_model(<architecture>, pretrained=False, **kwargs)` (random, seeded) and a config.json as timm
    writes one. Returns (snapshot folder, the state dict)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    torch.manual_seed(seed)
    sd = timm.create_model(cfg.architecture, pretrained=False, **kwargs).state_dict()
    config = {"architecture": cfg.architecture, "num_classes": cfg.num_classes,
              "pretrained_cfg": {k: v for k, v in cfg.to_dict().items() if k in ("tag", "input_size", "mean", "std",
                                                                                   "crop_pct", "interpolation")}}
    repo, _, revision = cfg.hf_hub_id.partition("@")
    files = {cfg.hf_hub_filename or "model.safetensors": sd, "config.json": config}
    return write_hub_cache(cache, repo, files, revision=revision or "main"), sd


def hub_env(cache) -> dict[str, str]:
    """The environment of a process that must read `cache` as its hub cache and never reach the network."""
    from pathlib import Path

    return {"HF_HUB_CACHE": str(cache), "HF_HOME": str(Path(cache).parent / "hf_home"), "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}
