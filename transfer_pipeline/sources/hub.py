"""Hub sources: `hf://org/name[@revision][/file or folder]` and `timm://name.tag[@revision]` -> local files
and what summary.json records about them (repo, revision asked for, commit, files).

One job: turn the hub path into files in huggingface_hub's cache (HF_HOME / HF_HUB_CACHE), which read.py's
readers then read like any checkpoint. With `HF_HUB_OFFLINE=1` only the cache is read: a cached repo works,
an uncached one is a UserError naming the cache folder and the command that fills it. Without it,
huggingface_hub fetches what the cache lacks (as it does itself); this is the pipeline's only download.
A timm name is looked up in timm's `pretrained_cfg`, which says which hub repo (and file) holds its weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError, did_you_mean

log = logging.getLogger(__name__)
SCHEMES = ("hf://", "timm://")
# A repo's weights, in the order preferred when the path names no file (as transformers and timm prefer them).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # a hub id part: no '/', '..' or leading '.' / '-'
REPO = re.compile(rf"{_PART}/{_PART}")
TIMM_NAME = re.compile(_PART)
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
COMMIT = re.compile(r"[0-9a-f]{40}")
# timm's pretrained_cfg: what preprocessing and the plan need from it
TIMM_KEYS = ("hf_hub_id", "hf_hub_filename", "architecture", "tag", "input_size", "crop_pct", "crop_mode",
             "interpolation", "mean", "std", "num_classes", "classifier", "first_conv", "license")
EXTRAS = {"hf": "huggingface", "timm": "timm"}


@dataclass(frozen=True)
class HubPath:
    scheme: str  # 'hf' | 'timm'
    name: str  # hf: the repo id 'org/name'; timm: the pretrained name 'convnext_tiny.fb_in22k'
    revision: str | None  # branch, tag or commit as written; None = the default branch
    inside: str  # hf: a file or folder inside the repo ('' = its top)
    given: str  # as written in the config
    where: str = "source.path"  # the config key it was given in


@dataclass
class HubFiles:
    path: Path  # the file to read: a weights file or a shard index (its shards beside it, all in the cache)
    record: dict[str, Any]  # summary.json's `hub_source`


def is_hub_path(path: str | None) -> bool:
    return isinstance(path, str) and path.startswith(SCHEMES)


def parse(given: str, where: str = "source.path") -> HubPath:
    """`hf://org/name[@rev][/file or folder]` or `timm://name[@rev]`, checked without touching any file."""
    scheme, _, rest = given.partition("://")
    example = ("hf://org/name, hf://org/name@v1.0 or hf://org/name@<commit>/sub/model.safetensors" if scheme == "hf"
               else "timm://convnext_tiny.fb_in22k (a name timm.list_pretrained() lists)")
    bad = f"{where}={given!r}: "
    head, slash, inside = rest.partition("/") if scheme == "timm" else _split_repo(rest)
    name, at, revision = head.partition("@")
    if scheme == "timm":
        if slash or not TIMM_NAME.fullmatch(name):
            raise UserError(f"{bad}not a timm pretrained name; write it like {example}.")
    elif not REPO.fullmatch(name) or "--" in name or ".." in name or len(name) > 96:
        raise UserError(f"{bad}{repr(name) + ' is not a hub repo id' if name else 'no repo named'}; write it like "
                        f"{example} (both parts of org/name: "
                        "letters, digits, '-', '_', '.', not starting with '.' or '-', no '..' or '--').")
    if at and not REVISION.fullmatch(revision):
        raise UserError(f"{bad}the revision after '@' is {'empty' if not revision else repr(revision)}; give a branch, "
                        "tag or commit hash (letters, digits, '-', '_', '.'), e.g. @main, or leave out '@'.")
    parts = inside.split("/") if inside else []
    if slash and (not parts or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in inside):
        raise UserError(f"{bad}the path inside the repo, {inside!r}, must name a file or folder of it: no '..', '.', "
                        "empty or hidden parts (e.g. hf://org/name/sub/model.safetensors).")
    return HubPath(scheme, name, revision if at else None, "/".join(parts), given, where)


def _split_repo(rest: str) -> tuple[str, str, str]:
    """'org/name@rev/sub/file' -> ('org/name@rev', '/', 'sub/file'): the repo id has exactly two parts."""
    org, slash, after = rest.partition("/")
    name, slash2, inside = after.partition("/")
    return (f"{org}{slash}{name}", slash2, inside)


def hub_cache() -> Path:
    """huggingface_hub's cache folder, from the environment as it is now (huggingface_hub reads it once, at import)."""
    env = os.environ
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set, as huggingface_hub reads it."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _import(scheme: str, module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"source.path={scheme}://...: needs the package {module}, which is not installed here. "
                        f"Install it with: pip install \"transfer_pipeline[{EXTRAS[scheme]}]\"") from None


def fill_command(repo: str, revision: str | None, files: list[str] = ()) -> str:
    """The command that puts a repo (or some of its files) into the cache, in the installed huggingface_hub's CLI."""
    import importlib.util
    import shutil

    cli = "hf" if shutil.which("hf") or importlib.util.find_spec("huggingface_hub.cli") else "huggingface-cli"
    rev = f" --revision {revision}" if revision else ""
    return f"{cli} download {repo}{''.join(' ' + f for f in files)}{rev}"


def _timm(spec: HubPath) -> tuple[str, str | None, str, dict[str, Any]]:
    """A timm pretrained name -> (hub repo, revision, file inside or '', the pretrained_cfg recorded)."""
    timm = _import("timm", "timm")
    try:
        cfg = timm.models.get_pretrained_cfg(spec.name)
    except (RuntimeError, ValueError, KeyError):  # a known architecture with an unknown tag
        cfg = None
    if cfg is None:
        raise UserError(f"source.path={spec.given!r}: timm {timm.__version__} has no pretrained weights named "
                        f"{spec.name!r}.{did_you_mean(spec.name, timm.list_pretrained())} "
                        "(python -c \"import timm; print(timm.list_pretrained('convnext*'))\" lists them.)")
    record = {k: v for k, v in cfg.to_dict().items() if k in TIMM_KEYS and v is not None}
    if not cfg.hf_hub_id:
        where = cfg.url or cfg.file or "no known place"
        raise UserError(f"source.path={spec.given!r}: timm keeps these weights at {where}, not on the Hugging Face "
                        "hub; download that file and set source.path to it.")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    return repo, spec.revision or revision or None, cfg.hf_hub_filename or "", record


class _Repo:
    """One repo at one revision, read through huggingface_hub: from the cache only when offline (or out of reach)."""

    def __init__(self, spec: HubPath, repo: str, revision: str | None) -> None:
        self.hub = _import(spec.scheme, "huggingface_hub")
        self.spec, self.repo, self.revision = spec, repo, revision
        self.cache = hub_cache()
        self.folder = self.cache / f"models--{repo.replace('/', '--')}"
        self.offline = offline()  # HF_HUB_OFFLINE
        self.local = self.offline  # read the cache only: offline, or the hub turned out to be out of reach
        self.commit = self._cached_commit() if self.local else None  # online: known after the first file

    def where(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")

    def _not_cached(self, what: str, files: list[str] = ()) -> UserError:
        why = "HF_HUB_OFFLINE is set" if self.offline else "the hub could not be reached"
        fill = fill_command(self.repo, self.revision, list(files))
        timm_fill = (f", or python -c \"import timm; timm.create_model('{self.spec.name}', pretrained=True)\""
                     if self.spec.scheme == "timm" and not self.spec.revision else "")
        return UserError(f"{self.spec.where}={self.spec.given!r}: {what}, and {why}, so nothing is downloaded. The cache is "
                         f"{self.cache} (HF_HUB_CACHE or HF_HOME move it). Fill it where there is network (with "
                         f"HF_HUB_OFFLINE unset): {fill}{timm_fill}")

    def _cached_commit(self) -> str:
        """The commit the revision names in the cache (refs/<revision>, or a commit hash with its snapshot)."""
        if not (self.folder / "snapshots").is_dir():
            raise self._not_cached(f"{self.repo} is not in the hub cache")
        rev = self.revision or "main"
        ref = self.folder / "refs" / rev
        commit = rev if COMMIT.fullmatch(rev) else ref.read_text().strip() if ref.is_file() else ""
        if not COMMIT.fullmatch(commit) or not (self.folder / "snapshots" / commit).is_dir():
            refs = sorted(p.name for p in (self.folder / "refs").glob("*") if p.is_file())
            snaps = sorted(p.name[:12] for p in (self.folder / "snapshots").iterdir())
            raise self._not_cached(f"revision {rev!r} of {self.repo} is not in the hub cache (cached: branches/tags "
                                   f"{', '.join(refs) or 'none'}; commits {', '.join(snaps) or 'none'})")
        return commit

    def snapshot(self) -> Path:
        return self.folder / "snapshots" / (self.commit or "")

    def file(self, name: str) -> Path | None:
        """One file of the repo at the revision, in the cache; None where the repo (or the cached snapshot) lacks it."""
        from huggingface_hub.utils import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                           RepositoryNotFoundError, RevisionNotFoundError)

        if self.local and not (self.snapshot() / name).is_file():
            return None
        try:
            path = Path(self.hub.hf_hub_download(self.repo, name, revision=self.commit or self.revision,
                                                 cache_dir=self.cache, local_files_only=self.local))
        except LocalEntryNotFoundError:  # online, but the hub is out of reach and the cache lacks the file
            self.unreachable = True
            return None
        except EntryNotFoundError:  # the hub says the repo has no such file
            return None
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"{self.spec.where}={self.spec.given!r}: the hub refuses {self.where()}: {first[:300]}") from None
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise UserError(f"{self.spec.where}={self.spec.given!r}: cannot fetch {name} of {self.where()} "
                            f"({type(e).__name__}: {str(e)[:300]}).") from None
        if self.commit is None:
            self.commit = path.relative_to(self.folder / "snapshots").parts[0]
        return path

    unreachable = False

    def weights(self, inside: str) -> tuple[Path, list[str]]:
        """The weights file `inside` names (or the preferred one in that folder) and every weights file it needs."""
        is_dir = self.local and (self.snapshot() / inside).is_dir()
        folder = f"{inside}/" if inside else ""
        names = ([inside] if inside and not is_dir else []) + [folder + n for n in WEIGHT_FILES]
        for name in names:
            path = self.file(name)
            if path is not None:
                return path, [name, *self._shards(path, name)]
        if not self.local and self.commit is None and self.unreachable:  # the cache may still have the revision
            self.local = True
            self.commit = self._cached_commit()
            return self.weights(inside)
        where = f"{'the cached snapshot ' + self.commit[:12] + ' of ' if self.local else ''}{self.where()}"
        if inside and not is_dir and not (self.local and (self.snapshot() / inside).is_file()):
            what = f"{where} has no file or folder {inside!r}"
            here = self.snapshot() / inside.rpartition("/")[0]
        else:
            what = f"{where} has no {' or '.join(folder + n for n in WEIGHT_FILES)}"
            here = self.snapshot() / inside
        has = sorted(p.name for p in here.iterdir())[:12] if self.local and here.is_dir() else []
        what += f" (there: {', '.join(has)})" if has else ""
        if self.local:
            raise self._not_cached(what, [inside] if inside else [])
        raise UserError(f"{self.spec.where}={self.spec.given!r}: {what}. Name the weights file: hf://{self.where()}/<file>.")

    def _shards(self, index: Path, name: str) -> list[str]:
        """A shard index's shards, fetched (or found in the cache) beside it; names that escape: the reader refuses."""
        if not name.endswith(".index.json"):
            return []
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = list(dict.fromkeys(v for v in weight_map.values() if isinstance(v, str)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return []  # read.py says what is wrong with the index
        folder = name.rpartition("/")[0]
        names = [f"{folder}/{s}" if folder else s for s in shards
                 if s and not s.startswith(("/", ".")) and ".." not in s.split("/") and "\\" not in s]
        missing = [n for n in names if self.file(n) is None]
        if missing:
            raise self._not_cached(f"{len(missing)} shard(s) of {name} are not in the cache ({', '.join(missing[:3])})",
                                   [name, *missing])
        return names


def _config(repo: _Repo, weights: str) -> dict[str, Any] | None:
    """config.json beside the weights (Hugging Face models): its architecture and number of labels, if there is one."""
    folder = weights.rpartition("/")[0]
    name = f"{folder}/config.json" if folder else "config.json"
    path = repo.file(name)
    if path is None:
        return None
    try:
        data = path.read_bytes()
        config = json.loads(data)
    except (OSError, ValueError) as e:
        return {"file": name, "error": f"not readable JSON ({type(e).__name__})"}
    if not isinstance(config, dict):
        return {"file": name, "error": "not a JSON object"}
    labels = config.get("id2label")
    found = {k: config.get(k) for k in ("architectures", "model_type", "num_labels", "architecture", "num_classes")}
    if found["num_labels"] is None and isinstance(labels, dict):
        found["num_labels"] = len(labels)  # transformers' configs may give only the labels
    found = {k: v for k, v in found.items() if v is not None}
    return {"file": name, "sha256": hashlib.sha256(data).hexdigest(), **found}


def resolve(given: str, where: str = "source.path") -> HubFiles:
    """A hub path -> the local file to read and the record of what was resolved (see the module's docstring)."""
    spec = parse(given, where)
    timm_cfg = None
    repo_id, revision, inside = spec.name, spec.revision, spec.inside
    if spec.scheme == "timm":
        repo_id, revision, inside, timm_cfg = _timm(spec)
    repo = _Repo(spec, repo_id, revision)
    path, files = repo.weights(inside)
    assert repo.commit is not None
    record: dict[str, Any] = {
        "path": given, "repo": repo_id, "revision": revision, "commit": repo.commit,
        "files": dict.fromkeys(files),  # name in the repo -> SHA-256, filled in as the run hashes its source
        "snapshot": str(repo.snapshot()),
        "pinned": f"{spec.scheme}://{spec.name}@{repo.commit}" + (f"/{spec.inside}" if spec.inside else ""),
    }
    config = _config(repo, files[0])
    if config is not None:
        record["config"] = config
    if timm_cfg is not None:
        record["timm_pretrained_cfg"] = timm_cfg
    log.info("%s: %s at commit %s%s, %s", given, repo_id, repo.commit[:12], f" ({revision})" if revision else "",
             ", ".join(files))
    if timm_cfg is not None:
        log.info("%s: timm pretrained_cfg %s", given, ", ".join(f"{k}={v}" for k, v in timm_cfg.items()))
    return HubFiles(path, record)


def config_file(repo_id: str, revision: str | None, where: str) -> Path:
    """config.json of a hub repo at a revision, through the cache as weights are read (model=hf model.name=org/name)."""
    spec = parse(f"hf://{repo_id}" + (f"@{revision}" if revision else ""), where)
    repo = _Repo(replace(spec, given=repo_id), spec.name, spec.revision)
    path = repo.file("config.json")
    if path is None:
        if repo.local or repo.unreachable:
            raise repo._not_cached(f"config.json of {repo.where()} is not in the hub cache")  # fill: the whole repo
        raise UserError(f"{where}={repo_id!r}: {repo.where()} has no config.json, so it is not a transformers model; "
                        "give a hub id or folder that holds one.")
    return path


def rerun_pin(config: dict[str, Any], summary: dict[str, Any], overrides: list[str]) -> list[str]:
    """For `--rerun`: the override that makes a hub source resolve to the commit the run used
    (`source.path=hf://org/name@<commit>`), unless the command line sets the source itself."""
    record = summary.get("hub_source")
    source = config.get("source")
    if not isinstance(record, dict) or not isinstance(source, dict) or source.get("path") != record.get("path"):
        return []
    if any(o.lstrip("+~").split("=", 1)[0] in ("source", "source.path") for o in overrides):
        return []
    pinned = record.get("pinned")
    if not isinstance(pinned, str) or not is_hub_path(pinned):
        return []
    spec = parse(pinned, "--rerun: summary.json's hub_source.pinned")
    if spec.revision is None or not COMMIT.fullmatch(spec.revision):
        return []
    return [f"source.path={pinned}"]
