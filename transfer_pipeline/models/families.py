"""Models by name: `model=torchvision|timm|hf model.name=...` (conf/model/<family>.yaml).

Each builder takes the name a person knows the model by, `num_classes` (null in the group files:
the recipe fills it from the data's classes) and any further arguments of the model itself. A name
that is not known, or an argument the model refuses, is a UserError with the close names. No builder
downloads: weights come from `source.path` (a file, `hf://`, `timm://`) or `source.weights`.
"""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Any

from ..errors import UserError, did_you_mean


def torchvision(name: str, num_classes: int | None = None, **kwargs: Any) -> Any:
    """`torchvision.models.get_model(name, num_classes=..., **kwargs)`: any name torchvision lists."""
    import torchvision.models as tvm

    known = tvm.list_models()
    if name not in known:
        raise UserError(f"model.name={name!r}: torchvision has no such model.{did_you_mean(name, known)} "
                        "(python -c \"import torchvision; print(torchvision.models.list_models())\" lists them all.)")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    builder = tvm.get_model_builder(name)
    return _call(builder, kwargs, f"torchvision.models.{name}", _returned_class(builder))


def timm(name: str, num_classes: int | None = None, **kwargs: Any) -> Any:
    """`timm.create_model(name, pretrained=False, num_classes=..., **kwargs)`; `name` may carry a pretrained tag
    (`convnext_tiny.fb_in22k`), which picks that tag's config (mean/std, input size) without downloading."""
    try:
        import timm as timm_lib
    except ImportError:
        raise UserError("model=timm: needs the timm package: pip install \"transfer_pipeline[timm]\".") from None
    arch = name.split(".", 1)[0]
    if not timm_lib.is_model(arch):
        raise UserError(f"model.name={name!r}: timm has no model {arch!r}.{did_you_mean(arch, timm_lib.list_models())} "
                        "(python -c \"import timm; print(timm.list_models('*resnet*'))\" searches them.)")
    if kwargs.pop("pretrained", False):
        raise UserError("model.pretrained: the pipeline loads weights itself (no download while building); give "
                        f"source.path=timm://{name} instead, and drop model.pretrained.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    entry = timm_lib.models.model_entrypoint(arch)
    return _call(lambda **kw: timm_lib.create_model(name, pretrained=False, **kw), kwargs, f"timm model {name}",
                 _returned_class(entry))


HF_HEADS = {"sequence_classification": "AutoModelForSequenceClassification",
            "image_classification": "AutoModelForImageClassification",
            "token_classification": "AutoModelForTokenClassification", "base": "AutoModel"}


def hf(name: str, num_classes: int | None = None, head: str = "auto", revision: str | None = None,
       **overrides: Any) -> Any:
    """A Hugging Face model built from its config.json (a folder, or a hub id read from the local cache), with
    the task's head: image classification for vision models, sequence classification otherwise. Random weights:
    the weights come from source.path (e.g. hf://<the same id>)."""
    try:
        import transformers
    except ImportError:
        raise UserError("model=hf: needs the transformers package: pip install \"transfer_pipeline[huggingface]\".") \
            from None
    config = hf_config(name, revision)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise UserError(f"model.name={name!r}: its config.json has no model_type (e.g. bert), so transformers cannot "
                        "tell the architecture.")
    if head == "auto":
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

        head = "image_classification" if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES \
            else "sequence_classification"
    if head not in HF_HEADS:
        raise UserError(f"model.head={head!r}: choose auto or one of {', '.join(HF_HEADS)}.{did_you_mean(head, HF_HEADS)}")
    for drop in ("architectures", "id2label", "label2id", "_name_or_path", "transformers_version"):
        config.pop(drop, None)  # the source task's labels and head class: this task has its own
    try:
        cfg = transformers.AutoConfig.for_model(model_type, **config)
    except (ValueError, KeyError) as e:
        raise UserError(f"model.name={name!r}: transformers cannot make a {model_type} config of it ({e}).") from None
    if num_classes is not None:
        cfg.num_labels = num_classes
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            attrs = [a for a in cfg.to_dict() if not a.startswith("_")]
            raise UserError(f"model.{key}: {type(cfg).__name__} has no attribute {key!r}.{did_you_mean(key, attrs)}")
        setattr(cfg, key, value)
    return getattr(transformers, HF_HEADS[head]).from_config(cfg)


def hf_config(name: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a folder, or of a hub id read as `hf://` sources are (the cache; downloaded only when the
    hub is reachable and HF_HUB_OFFLINE is not set)."""
    folder = Path(name).expanduser()
    if folder.is_dir() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        path = folder / "config.json"
        if not path.is_file():
            raise UserError(f"model.name={name!r}: no config.json in {folder}; give a folder that save_pretrained "
                            "wrote, or a hub id (org/name).")
    else:
        path = _hub_config(name, revision)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"model.name={name!r}: cannot read {path} as a config.json ({e}).") from None
    if not isinstance(config, dict):
        raise UserError(f"model.name={name!r}: {path} holds {type(config).__name__}, not a config object.")
    return config


def _hub_config(repo: str, revision: str | None) -> Path:
    from ..sources.hub import config_file  # the cache, offline rules and messages of hf:// sources

    return config_file(repo, revision, "model.name")


def _returned_class(builder: Any) -> type | None:
    """The model class a builder function returns (its return annotation), to list what the class accepts."""
    try:
        ret = typing.get_type_hints(builder).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: no list, the error still names the argument
        return None
    return ret if isinstance(ret, type) else None


def accepted_arguments(builder: Any, cls: type | None) -> list[str]:
    """What a builder takes: its own named parameters, and those of the class it passes **kwargs to."""
    names: list[str] = []
    for fn in (builder, cls.__init__ if cls is not None else None):
        if fn is None:
            continue
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
                  and p.name not in names]
    return names


def _call(builder: Any, kwargs: dict[str, Any], what: str, cls: type | None) -> Any:
    try:
        return builder(**kwargs)
    except TypeError as e:
        refused = next((k for k in kwargs if f"'{k}'" in str(e) and "unexpected keyword" in str(e)), None)
        if refused is None:
            raise
        accepted = accepted_arguments(builder, cls)
        close = did_you_mean(refused, accepted)
        raise UserError(f"model.{refused}: {what} does not take an argument {refused!r}.{close}"
                        f"{' It takes: ' + ', '.join(accepted) + '.' if accepted else ''}") from None
