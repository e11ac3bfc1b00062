"""Every command the docs mark runnable (```` ```bash run ```` blocks in README.md and docs/*.md) runs.

One test per page: its blocks run in order, in a fresh folder of its own holding `run.py` and
`conf`, as a new user would type them in a checkout. Blocks of one page share that folder, so a
later block may use an earlier one's outputs. A failure names the page, the line where the block
starts, the block and the tail of its output.

`conf` is a symlink to the repo's, `run.py` a copy: a symlinked run.py finds ./conf too (Hydra reads
config_path from the unresolved __file__), but run.py tells the shipped conf/ from a person's own
config folder by `Path(__file__).resolve().parent / "conf"`, which would then be the repo's, so the
folder's conf/ would count as the person's code folder (on sys.path, in summary.json's code_dirs).
The copy imports the package as a user's run.py does: installed (`pip install -e .`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_docs import Block, page_blocks

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = {page.relative_to(ROOT).as_posix(): page_blocks(page, ROOT) for page in PAGES if page.is_file()}
RUNNABLE = {name: blocks for name, blocks in BLOCKS.items() if blocks}
TIMEOUT_S = 300  # per block
TAIL = 3000  # characters of output shown on a failure


def test_readme_has_runnable_blocks():
    """A collector that finds nothing would let every page pass; README.md always shows commands."""
    assert BLOCKS.get("README.md"), "README.md has no ```bash run block (or the collector is broken)"


@pytest.fixture(scope="session")
def docs_hub_cache(tmp_path_factory) -> dict[str, str]:
    """The environment of a machine whose Hugging Face cache holds the hub models the docs name (as
    `hf download <id>` leaves it), offline: the docs' hf:// and timm:// commands read it, nothing downloads.
    The models are random, of the real repos' architectures and file names."""
    from transformers import BertConfig, BertForPreTraining

    from cache_models import hub_env, timm_hub_cache, write_hub_cache

    cache = tmp_path_factory.mktemp("hub") / "hub"
    timm_hub_cache(cache, "resnet18.a1_in1k")
    config = dict(model_type="bert", vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=512, max_position_embeddings=512, architectures=["BertForPreTraining"])
    import io

    import torch

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(BertForPreTraining(BertConfig(**config)).state_dict(), buffer)  # the repo has pytorch_model.bin
    write_hub_cache(cache, "prajjwal1/bert-tiny", {"config.json": config, "pytorch_model.bin": buffer.getvalue()})
    return hub_env(cache)


def run_block(block: Block, folder: Path, extra_env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(exit code or None on timeout, stdout + stderr) of one block run by bash in `folder`."""
    env = {**os.environ, **(extra_env or {})}
    env.pop("HYDRA_FULL_ERROR", None)  # what a user sees: Hydra's short errors
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # `python`: this one
    proc = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + block.text], cwd=folder, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: a timeout stops everything it started
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_page_commands_run(page, tmp_path, docs_hub_cache):
    folder = tmp_path.resolve()  # resolved, as run.py resolves its own path
    shutil.copy2(ROOT / "run.py", folder / "run.py")
    (folder / "conf").symlink_to(ROOT / "conf", target_is_directory=True)
    for block in RUNNABLE[page]:
        code, out = run_block(block, folder, docs_hub_cache)
        if code != 0:
            what = f"ran past {TIMEOUT_S} s" if code is None else f"exited with {code}"
            pytest.fail(f"{page}:{block.line}: this `bash run` block {what} (run in {folder}):\n"
                        f"{block.text.rstrip()}\n--- last output ---\n{out[-TAIL:]}", pytrace=False)
