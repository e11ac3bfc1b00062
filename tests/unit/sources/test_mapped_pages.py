"""sources/mapped_pages.py: after the value check, the source's pages leave this process's page tables
(so a 1 GiB export writes at a steady speed) and no value is lost, not even one copied on write."""

from __future__ import annotations

from pathlib import Path

import torch

from transfer_pipeline.build import build_model
from transfer_pipeline.mapping.apply import load_model, target_meta
from transfer_pipeline.sources.mapped_pages import drop_mapped_pages, mappings_of
from transfer_pipeline.sources.read import read_path

from helpers import make_plan

SMAPS = """\
7f0000000000-7f0000400000 r--p 00000000 fd:00 1234                       /data/model.pt
Size:               4096 kB
Rss:                4096 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
7f0000400000-7f0000800000 rw-p 00400000 fd:00 1234                       /data/model.pt
Size:               4096 kB
Anonymous:             8 kB
VmFlags: rd wr mr mw me ac
7f0000800000-7f0000900000 rw-p 00000000 00:00 0
Anonymous:          1024 kB
7f0000900000-7f0000a00000 r--p 00000000 fd:00 99                         /data/other file.pt
Anonymous:             0 kB
7f0000a00000-7f0000b00000 r--p 00000000 fd:00 98                         /data/my model.pt
Anonymous:             0 kB
"""


def test_only_mappings_of_the_files_with_no_page_of_their_own_are_chosen():
    assert mappings_of([Path("/data/model.pt")], SMAPS) == [(0x7f0000000000, 0x7f0000400000)]
    assert mappings_of([Path("/data/my model.pt")], SMAPS) == [(0x7f0000a00000, 0x7f0000b00000)]  # spaces in names
    assert mappings_of([Path("/data/none.pt")], SMAPS) == []


def resident_kb(path: Path) -> int:
    """Rss of this process's mappings of `path`."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and ":" not in head[0]:
            inside = len(head) == 6 and head[5] == str(path.resolve())
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def big_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "mlp.pt"
    torch.save({"fc0.weight": torch.randn(512, 256), "fc0.bias": torch.randn(512),
                "fc1.weight": torch.randn(5, 512), "fc1.bias": torch.randn(5)}, path)
    return path


def test_the_checked_values_leave_the_page_tables_and_stay_the_files(tmp_path):
    path = big_checkpoint(tmp_path)
    src = read_path(path)  # memory-mapped
    node = {"_target_": "transfer_pipeline.models.TinyMLP", "in_features": 256, "hidden": [512], "num_classes": 5}
    model = build_model(node, meta=True)
    plan = make_plan(src.meta, target_meta(model))
    model = load_model(model, plan, src, torch.device("cpu"), lambda: build_model(node))
    assert resident_kb(path) == 0  # every value was read by the check, and nothing of it is mapped now
    saved = torch.load(path)
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name  # read again from the page cache: the file's values
    assert resident_kb(path) > 0


def test_a_page_copied_on_write_is_never_dropped(tmp_path):
    path = big_checkpoint(tmp_path)
    sd = torch.load(path, mmap=True, weights_only=True)  # a private mapping: writes are copies of this process's
    before = {k: v.clone() for k, v in sd.items()}
    sd["fc0.weight"][0, 0] = 123.0
    assert drop_mapped_pages([path]) == 0  # the mapping holds a page of its own: left as it is
    assert sd["fc0.weight"][0, 0].item() == 123.0
    del sd
    sd = torch.load(path, mmap=True, weights_only=True)
    assert all(float(v.sum()) == float(before[k].sum()) for k, v in sd.items())
    assert resident_kb(path) > 0
    assert drop_mapped_pages([path]) > 0 and resident_kb(path) == 0
    assert all(torch.equal(v, before[k]) for k, v in sd.items())  # dropped, and still the file's values


def test_paths_never_mapped_change_nothing(tmp_path):
    assert drop_mapped_pages([tmp_path / "never.pt"]) == 0
