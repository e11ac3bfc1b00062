"""The steps that end a mode with what it writes: export (model.safetensors), evaluate (eval.json,
the confusion matrix), predict (predictions.csv), and a plan's end.

Steps of recipe.STEPS, each a plain function of one `state.Run`.
"""

from __future__ import annotations

import logging

from ..errors import UserError
from .state import Run


log = logging.getLogger(__name__)


def planned(r: Run) -> None:
    r.summary["status"] = "planned"


def exported(r: Run) -> None:
    from .. import files

    path = r.run_dir / "model.safetensors"
    files.save_weights(path, r.model.state_dict(), {"source": str(r.summary["source"])})
    r.summary["status"] = "exported"
    log.info("Exported %s weights to %s", r.report.target_name, path)


def evaluated(r: Run) -> None:
    """mode=eval: the test split when there is one (else val): eval.json, and the confusion matrix for classification."""
    from .. import files
    from ..training.evaluate import evaluate

    from .adapting import head_from_adapter, not_loaded

    missing = not_loaded(r)  # a saved adapter's head (source.adapter) gives the head its values
    if missing:
        log.warning("mode=eval: %d tensor(s) were not loaded (%s%s) and keep their random init; to evaluate trained "
                    "weights give source.path=<run>/model.safetensors with mapping=default", len(missing),
                    ", ".join(missing[:3]), " ..." if len(missing) > 3 else "")
    elif not head_from_adapter(r):  # the outputs are the weights' own: their classes must be the data's
        from ..training.predict import check_same_classes, saved_classes

        check_same_classes(saved_classes(r.weights.extra if r.weights is not None else {}, r.cfg.task),
                           r.data.class_names, "eval")
    split = "test" if r.data.test is not None else "val"
    loader = r.loaders[1]
    if split == "test":  # read as the val split is
        from ..data.datasets import eval_loader

        loader = eval_loader(r.data.test, loader.batch_size, loader.num_workers, loader.pin_memory)
    result = evaluate(r.model, loader, r.engine, r.task, r.cfg.trainer.limit_val_batches, detail=True)
    confusion = result.pop("confusion", None)
    scalars = {k: v for k, v in result.items() if not isinstance(v, dict) and k != "n"}
    report = {"split": split, "samples": result["n"], "task": r.cfg.task.value,
              **{f"{split}_{k}": v for k, v in scalars.items()},
              **{k: v for k, v in result.items() if isinstance(v, dict)}}
    extra = {}  # the data's extra splits (data.shift's `shifted`, your own keys), as in training's epochs
    for name, loader_ in r.extra_loaders.items():
        got = evaluate(r.model, loader_, r.engine, r.task, r.cfg.trainer.limit_val_batches)
        extra.update({f"{name}_{k}": v for k, v in got.items()})
    report.update(extra)
    files.write_json(r.run_dir / "eval.json", report)
    if confusion is not None:
        from ..training.curves import write_confusion

        files.write_json(r.run_dir / "confusion.json", confusion)
        write_confusion(r.run_dir / "confusion.png", confusion, f"{split} split, {result['n']} samples")
    r.summary.update(status="evaluated", eval_split=split, **{f"{split}_{k}": v for k, v in scalars.items()}, **extra)
    if split == "val":
        r.summary.update(val_acc=result.get("acc"), val_loss=result["loss"])
    log.info("%s (%d samples): %s", split, result["n"], "  ".join(f"{split}_{k} {v:.4f}" for k, v in scalars.items()))
    if extra:
        log.info("extra splits: %s", "  ".join(f"{k} {v:.4f}" for k, v in extra.items()))
    log.info("eval.json%s written to %s", ", confusion.json and confusion.png" if confusion else "", r.run_dir)


def predicted(r: Run) -> None:
    """mode=predict: predictions.csv for predict.input (image files) or the data's test split (else val)."""
    from ..training.predict import check_same_classes, image_inputs, predict, saved_classes
    from ..training.progress import bar_factory

    from .adapting import head_from_adapter, not_loaded

    cfg = r.cfg
    missing = not_loaded(r)  # a saved adapter's head (source.adapter) gives the head its values
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"mode=predict: {len(missing)} tensor(s) of the model were not loaded ({shown}), so "
                        "its predictions would come from random weights. Load every tensor: mapping=default (no "
                        "mapping.exclude), and source.path = the trained run's model.safetensors.")
    # the base file's class names are not those of a head the saved adapter brings
    names = None if head_from_adapter(r) else saved_classes(r.weights.extra if r.weights is not None else {}, cfg.task)
    if cfg.predict.input is not None:
        dataset, labelled = image_inputs(cfg), False
    else:
        from ..data.datasets import build_data
        from ..data.preprocess import preset_source

        r.data = build_data(cfg.data, cfg.seed, preset_source(cfg.source))
        check_same_classes(names, r.data.class_names, "predict")
        names = names or r.data.class_names
        split = "test" if r.data.test is not None else "val"
        dataset, labelled = getattr(r.data, split), True
        r.summary["predict_split"] = split
        log.info("mode=predict on the data's %s split (%d samples; predict.input names image files instead)", split,
                 len(dataset))
    r.model.to(r.device)
    figures = predict(cfg, r.model, r.engine, dataset, names, r.run_dir / "predictions.csv",
                          bar_factory(cfg.trainer.progress and r.engine.is_main, 1, desc="predict"), labelled)
    r.summary.update(status="predicted", **figures)
