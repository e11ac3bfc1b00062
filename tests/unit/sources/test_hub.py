"""transfer_pipeline.sources.hub: hf:// and timm:// paths resolved from a hub cache made in the test.

Every test reads a cache in huggingface_hub's own layout (tests/cache_models.py `write_hub_cache`) with
HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointed at tmp_path, and no socket may connect (`no_network`): nothing is
downloaded. Whole runs from hub sources: tests/e2e/test_hub_sources.py.
"""

from __future__ import annotations

import json
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file

from transfer_pipeline.errors import UserError
from transfer_pipeline.models.digits import PRETRAINED_0TO4
from transfer_pipeline.run.provenance import BackgroundHash, sha256_file
from transfer_pipeline.schema import SourceConfig
from transfer_pipeline.sources import hub
from transfer_pipeline.sources.read import preferred, read_source

from cache_models import timm_hub_cache, write_hub_cache
from helpers import same_weights

pytest.importorskip("huggingface_hub")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A test that tries to reach the network fails (HF_HUB_OFFLINE=1 must be all it takes)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a hub test tried to open a network connection: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return folder


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return load_file(PRETRAINED_0TO4)


def read(path: str, **kw):
    return preferred(read_source(SourceConfig(path=path, **kw)))


# --- the path syntax ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given, parts", [
    ("hf://org/name", ("hf", "org/name", None, "")),
    ("hf://org/name@v1.0", ("hf", "org/name", "v1.0", "")),
    ("hf://Org-1/na_me.x@" + "a" * 40 + "/sub/model.safetensors", ("hf", "Org-1/na_me.x", "a" * 40, "sub/model.safetensors")),
    ("hf://org/name/sub", ("hf", "org/name", None, "sub")),
    ("timm://convnext_tiny.fb_in22k", ("timm", "convnext_tiny.fb_in22k", None, "")),
    ("timm://resnet18.a1_in1k@main", ("timm", "resnet18.a1_in1k", "main", "")),
])
def test_parse(given, parts):
    p = hub.parse(given)
    assert (p.scheme, p.name, p.revision, p.inside) == parts


@pytest.mark.parametrize("given, message", [
    ("hf://", "no repo named"),
    ("hf://org", "'org' is not a hub repo id"),
    ("hf://../x", "'../x' is not a hub repo id"),
    ("hf://org/..", "'org/..' is not a hub repo id"),
    ("hf://org/-name", "not a hub repo id"),
    ("hf://org/na--me", "not a hub repo id"),
    ("hf://org/name@", "the revision after '@' is empty"),
    ("hf://org/name@../x", "the revision after '@' is '..'"),
    ("hf://org/name/../x", "the path inside the repo, '../x', must name a file or folder of it: no '..'"),
    ("hf://org/name/sub/../../x", "no '..'"),
    ("hf://org/name//x", "no '..', '.', empty"),
    ("hf://org/name/.git/config", "hidden"),
    ("hf://org/name/a\\..\\b", "must name a file or folder"),
    ("timm://", "not a timm pretrained name"),
    ("timm://../x", "not a timm pretrained name"),
    ("timm://resnet18/model.safetensors", "not a timm pretrained name"),
])
def test_hostile_paths_get_one_clear_message(cache, given, message):
    with pytest.raises(UserError, match="source.path=") as e:
        read(given)
    assert message in str(e.value)
    assert list(cache.iterdir()) == []  # nothing looked up, nothing written


# --- a cached repo ------------------------------------------------------------------------------------

def test_a_cached_repo_reads_like_a_local_checkpoint(cache, sd):
    snapshot = write_hub_cache(cache, "acme/digits", {"model.safetensors": sd, "README.md": "# digits"})
    src = read("hf://acme/digits")
    same_weights(src, sd)
    assert src.path == snapshot / "model.safetensors" and src.format == "safetensors"
    assert src.description == f"hf://acme/digits (commit {snapshot.name[:12]}: model.safetensors)"
    rec = src.hub
    assert rec["repo"] == "acme/digits" and rec["revision"] is None and rec["commit"] == snapshot.name
    assert rec["files"] == {"model.safetensors": None}  # the run's hash fills them in
    assert rec["pinned"] == f"hf://acme/digits@{snapshot.name}"
    assert "config" not in rec


def test_revisions_branch_tag_and_commit(cache, sd):
    other = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    old = write_hub_cache(cache, "acme/digits", {"model.safetensors": sd}, revision="v1")
    new = write_hub_cache(cache, "acme/digits", {"model.safetensors": other}, revision="main")
    assert old.name != new.name
    same_weights(read("hf://acme/digits"), other)
    same_weights(read("hf://acme/digits@main"), other)
    same_weights(read("hf://acme/digits@v1"), sd)
    src = read(f"hf://acme/digits@{old.name}")
    same_weights(src, sd)
    assert src.hub["revision"] == old.name and src.hub["commit"] == old.name


def test_a_revision_not_cached_names_what_is(cache, sd):
    snapshot = write_hub_cache(cache, "acme/digits", {"model.safetensors": sd}, revision="main")
    with pytest.raises(UserError) as e:
        read("hf://acme/digits@v2")
    msg = str(e.value)
    assert "revision 'v2' of acme/digits is not in the hub cache" in msg
    assert f"branches/tags main; commits {snapshot.name[:12]}" in msg
    assert f"The cache is {cache}" in msg and "download acme/digits --revision v2" in msg
    with pytest.raises(UserError, match=f"revision '{'b' * 40}' of acme/digits is not in the hub cache"):
        read(f"hf://acme/digits@{'b' * 40}")


def test_an_uncached_repo_names_the_cache_and_the_command(cache):
    with pytest.raises(UserError) as e:
        read("hf://acme/absent")
    msg = str(e.value)
    assert "acme/absent is not in the hub cache, and HF_HUB_OFFLINE is set, so nothing is downloaded" in msg
    assert f"The cache is {cache} (HF_HUB_CACHE or HF_HOME move it)" in msg
    assert msg.endswith(f"{hub.fill_command('acme/absent', None)}")
    assert " download acme/absent" in msg


def test_the_cache_follows_hf_home(tmp_path, monkeypatch, sd):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_hub_cache(tmp_path / "home" / "hub", "acme/digits", {"model.safetensors": sd})
    same_weights(read("hf://acme/digits"), sd)
    assert hub.hub_cache() == tmp_path / "home" / "hub"


@pytest.mark.parametrize("present, chosen", [
    (["model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"], "model.safetensors"),
    (["pytorch_model.bin", "model.safetensors.index.json"], "model.safetensors.index.json"),
    (["pytorch_model.bin", "flax_model.msgpack"], "pytorch_model.bin"),
])
def test_weights_files_are_preferred_in_order(cache, sd, present, chosen):
    files = {}
    for name in present:
        if name == "model.safetensors":
            files[name] = sd
        elif name == "pytorch_model.bin":
            import io

            buf = io.BytesIO()
            torch.save(sd, buf)
            files[name] = buf.getvalue()
        elif name.endswith(".index.json"):
            files["model-00001-of-00001.safetensors"] = sd
            files[name] = {"metadata": {}, "weight_map": dict.fromkeys(sd, "model-00001-of-00001.safetensors")}
        else:
            files[name] = b"\x00"
    write_hub_cache(cache, "acme/digits", files)
    src = read("hf://acme/digits")
    same_weights(src, sd)
    assert next(iter(src.hub["files"])) == chosen


def test_sharded_safetensors_with_their_index(cache, sd):
    names = list(sd)
    shard = {n: ("model-00001-of-00002.safetensors" if i % 2 else "model-00002-of-00002.safetensors")
             for i, n in enumerate(names)}
    files = {"model.safetensors.index.json": {"metadata": {"total_size": 1}, "weight_map": shard}}
    for file in set(shard.values()):
        files[file] = {n: sd[n] for n in names if shard[n] == file}
    snapshot = write_hub_cache(cache, "acme/sharded", files)
    src = read("hf://acme/sharded")
    same_weights(src, sd)
    assert src.format.startswith("sharded") and len(src.all_files) == 3
    assert list(src.hub["files"])[0] == "model.safetensors.index.json"
    assert sorted(src.hub["files"])[:2] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (snapshot / "model-00002-of-00002.safetensors").unlink()  # a partial download
    with pytest.raises(UserError, match=r"1 shard\(s\) of model.safetensors.index.json are not in the cache "
                                        r"\(model-00002-of-00002.safetensors\)") as e:
        read("hf://acme/sharded")
    assert "download acme/sharded model.safetensors.index.json model-00002-of-00002.safetensors" in str(e.value)


def test_a_shard_index_still_cannot_reach_outside_the_repo(cache, sd, tmp_path):
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "secret.safetensors")
    snapshot = write_hub_cache(cache, "acme/evil", {
        "model.safetensors.index.json": {"weight_map": dict.fromkeys(sd, "../../../../secret.safetensors")}})
    with pytest.raises(UserError, match="lies outside the index's folder"):
        read("hf://acme/evil")
    assert snapshot.exists()


def test_a_file_or_folder_inside_the_repo(cache, sd):
    small = {k: v for k, v in sd.items() if k.startswith("head")}
    write_hub_cache(cache, "acme/multi", {"model.safetensors": sd, "heads/model.safetensors": small,
                                         "heads/other.safetensors": small, "ema/pytorch_model.bin": b"junk"})
    same_weights(read("hf://acme/multi/heads/other.safetensors"), small)
    src = read("hf://acme/multi@main/heads")
    same_weights(src, small)
    assert list(src.hub["files"]) == ["heads/model.safetensors"]
    assert src.hub["pinned"] == f"hf://acme/multi@{src.hub['commit']}/heads"
    with pytest.raises(UserError, match="has no file or folder 'heads/absent.safetensors' .there: model.safetensors, "
                                        "other.safetensors"):
        read("hf://acme/multi/heads/absent.safetensors")
    with pytest.raises(UserError, match="is not a checkpoint format"):  # the reader's own message
        read("hf://acme/multi/ema")


def test_pytorch_model_bin_is_read_with_weights_only(cache, sd):
    import io

    buf = io.BytesIO()
    torch.save({"state_dict": sd, "args": {"lr": 0.1}}, buf)
    write_hub_cache(cache, "acme/bin", {"pytorch_model.bin": buf.getvalue()})
    src = read("hf://acme/bin")
    same_weights(src, sd)
    assert src.key == "state_dict" and src.hub["files"] == {"pytorch_model.bin": None}


def test_config_json_beside_the_weights_is_recorded(cache, sd):
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
              "id2label": {"0": "neg", "1": "pos"}}
    write_hub_cache(cache, "acme/bert", {"model.safetensors": sd, "config.json": config})
    rec = read("hf://acme/bert").hub["config"]
    assert rec["architectures"] == ["BertForSequenceClassification"] and rec["num_labels"] == 2
    assert rec["model_type"] == "bert" and rec["file"] == "config.json" and len(rec["sha256"]) == 64


def test_no_weights_in_the_cached_snapshot(cache):
    write_hub_cache(cache, "acme/empty", {"README.md": "nothing here"})
    with pytest.raises(UserError, match="the cached snapshot .* of acme/empty has no model.safetensors or "
                                        r"model.safetensors.index.json or pytorch_model.bin .*\(there: README.md\)"):
        read("hf://acme/empty")


# --- timm:// ------------------------------------------------------------------------------------------

def test_timm_name_reads_the_repo_its_pretrained_cfg_names(cache):
    pytest.importorskip("timm")
    snapshot, sd = timm_hub_cache(cache, "resnet18.a1_in1k")
    assert snapshot.parent.parent.name == "models--timm--resnet18.a1_in1k"
    src = read("timm://resnet18.a1_in1k")
    same_weights(src, sd)
    rec = src.hub
    assert rec["repo"] == "timm/resnet18.a1_in1k" and rec["commit"] == snapshot.name
    cfg = rec["timm_pretrained_cfg"]
    assert cfg["classifier"] == "fc" and cfg["first_conv"] == "conv1" and cfg["crop_pct"] == 0.95
    assert cfg["interpolation"] == "bicubic" and tuple(cfg["input_size"]) == (3, 224, 224)
    assert rec["config"]["architecture"] == "resnet18"
    assert rec["pinned"] == f"timm://resnet18.a1_in1k@{snapshot.name}"
    same_weights(read(rec["pinned"]), sd)


def test_timm_errors(cache):
    pytest.importorskip("timm")
    with pytest.raises(UserError, match=r"has no pretrained weights named 'resnet18.nope'.*Closest names: resnet18\."):
        read("timm://resnet18.nope")
    with pytest.raises(UserError) as e:
        read("timm://resnet18.tv_in1k")
    msg = str(e.value)
    assert "timm/resnet18.tv_in1k is not in the hub cache" in msg and f"The cache is {cache}" in msg
    assert "download timm/resnet18.tv_in1k" in msg
    assert "python -c \"import timm; timm.create_model('resnet18.tv_in1k', pretrained=True)\"" in msg


@pytest.mark.parametrize("path, module, extra", [("hf://acme/x", "huggingface_hub", "huggingface"),
                                                  ("timm://resnet18.a1_in1k", "timm", "timm")])
def test_a_missing_package_names_the_extra(cache, monkeypatch, path, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(UserError, match=rf"needs the package {module}, which is not installed here. Install it with: "
                                        rf"pip install \"transfer_pipeline\[{extra}\]\""):
        read(path)


# --- online: huggingface_hub is asked, and its cache is the fallback -----------------------------------

def test_online_asks_huggingface_hub_and_falls_back_to_the_cache(cache, monkeypatch, sd):
    import huggingface_hub
    from huggingface_hub.utils import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    snapshot = write_hub_cache(cache, "acme/digits", {"model.safetensors": sd})
    asked = []
    real = huggingface_hub.hf_hub_download

    def unreachable(repo_id, filename, **kw):  # what huggingface_hub says when the hub is out of reach
        asked.append((repo_id, filename, kw["local_files_only"]))
        if kw["local_files_only"]:
            return real(repo_id, filename, **kw)
        raise LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    src = read("hf://acme/digits")
    same_weights(src, sd)
    assert src.hub["commit"] == snapshot.name
    assert asked[0] == ("acme/digits", "model.safetensors", False)
    assert ("acme/digits", "model.safetensors", True) in asked  # then from the cache only
    with pytest.raises(UserError, match="acme/absent is not in the hub cache, and the hub could not be reached"):
        read("hf://acme/absent")


def test_online_a_downloaded_file_gives_the_commit(cache, monkeypatch, sd):
    import huggingface_hub
    from huggingface_hub.utils import EntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot = write_hub_cache(cache, "acme/binonly", {"pytorch_model.bin": b""}, revision=None)
    import io

    buf = io.BytesIO()
    torch.save(sd, buf)
    snapshot = write_hub_cache(cache, "acme/binonly", {"pytorch_model.bin": buf.getvalue()}, revision=None)
    asked = []

    def hub_download(repo_id, filename, revision=None, cache_dir=None, local_files_only=False):
        asked.append((filename, revision))
        if filename != "pytorch_model.bin":
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(snapshot / filename)  # as if just downloaded

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    src = read("hf://acme/binonly@v3")
    same_weights(src, sd)
    assert src.hub["commit"] == snapshot.name and src.hub["revision"] == "v3"
    assert asked[:3] == [("model.safetensors", "v3"), ("model.safetensors.index.json", "v3"),
                         ("pytorch_model.bin", "v3")]
    assert asked[3] == ("config.json", snapshot.name)  # after the first file: the same commit


# --- provenance and --rerun ---------------------------------------------------------------------------

def test_the_background_hash_fills_in_each_files_sha256(cache, sd):
    names = list(sd)
    shard = {n: f"part-{i % 2}.safetensors" for i, n in enumerate(names)}
    files = {"model.safetensors.index.json": {"weight_map": shard}}
    for file in set(shard.values()):
        files[file] = {n: sd[n] for n in names if shard[n] == file}
    snapshot = write_hub_cache(cache, "acme/sharded", files)
    src = read("hf://acme/sharded")
    h = BackgroundHash(src.all_files, src.hub)
    h.result()
    assert src.hub["files"] == {name: sha256_file(snapshot / name) for name in src.hub["files"]}
    assert all(len(v) == 64 for v in src.hub["files"].values())


def test_rerun_pin(cache, sd):
    commit = "c" * 40
    record = {"path": "hf://acme/digits", "pinned": f"hf://acme/digits@{commit}"}
    config = {"source": {"path": "hf://acme/digits"}}
    assert hub.rerun_pin(config, {"hub_source": record}, []) == [f"source.path=hf://acme/digits@{commit}"]
    assert hub.rerun_pin(config, {"hub_source": record}, ["source.path=hf://acme/other"]) == []
    assert hub.rerun_pin(config, {"hub_source": record}, ["source=none"]) == []
    assert hub.rerun_pin(config, {}, []) == []
    assert hub.rerun_pin({"source": {"path": "x.pt"}}, {"hub_source": record}, []) == []
    assert hub.rerun_pin(config, {"hub_source": {**record, "pinned": "hf://acme/digits@main"}}, []) == []
    with pytest.raises(UserError, match="--rerun: summary.json's hub_source.pinned="):
        hub.rerun_pin(config, {"hub_source": {**record, "pinned": "hf://acme/digits@c/../../x"}}, [])


def test_inspect_reads_a_hub_path(cache, sd, capsys):
    from transfer_pipeline.sources.inspect_checkpoint import main

    snapshot = write_hub_cache(cache, "acme/digits", {"model.safetensors": sd})
    assert main(["hf://acme/digits"]) == 0
    out = capsys.readouterr().out
    assert f"Checkpoint: {snapshot / 'model.safetensors'}" in out and f"tensors: {len(sd)} " in out
    assert main(["hf://acme/absent"]) == 2
    assert "acme/absent is not in the hub cache" in capsys.readouterr().err


def test_the_record_is_json(cache, sd):
    write_hub_cache(cache, "acme/digits", {"model.safetensors": sd, "config.json": {"num_labels": 5}})
    rec = read("hf://acme/digits").hub
    assert json.loads(json.dumps(rec)) == rec


def test_the_python_api_reads_a_hub_source_from_the_cache(tmp_path, monkeypatch):
    import transfer_pipeline as tp
    from cache_models import write_hub_cache
    from transfer_pipeline.models import DigitsCNN

    torch.manual_seed(1)
    trained = DigitsCNN(num_classes=5)
    write_hub_cache(tmp_path / "hub", "acme/digits", {"model.safetensors": trained.state_dict()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = DigitsCNN(num_classes=5)
    report = tp.load_weights(model, "hf://acme/digits")
    assert report.loaded_fraction == 1.0 and torch.equal(model.head.weight, trained.head.weight)
