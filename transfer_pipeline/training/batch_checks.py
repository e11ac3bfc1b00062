"""What the loop says when the data or the model is wrong: the first batch checked before training, and the
cause of a NaN / inf loss (the input, the targets, bad weights, or divergence)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import UserError
from ..data.batches import ShuffledBatches
from .engine import Engine
from ..model_io import finite, first_rows, forward_fault, is_shape_error, shape_text, split_batch
from .task import TaskMetrics, check_fit


def check_batch(model: nn.Module, loader, engine: Engine, task: TaskMetrics) -> None:
    """One forward pass on two validation samples: a model that cannot take the data, or whose output does not
    fit the targets, fails here with the keys to set."""
    try:
        first = next(iter(loader))
    except UserError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as e:
        raise UserError(f"data: the first validation batch cannot be made ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}). Items must stack into a "
                        "batch: tensors of one shape per key, numbers as targets (class indices, 0/1 per label, or "
                        "values).") from None
    x, y = engine.batch(first)
    x, y = first_rows(x, 2), y[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = engine.logits(model, x)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a model may raise anything; which it is decides the message
        if not is_shape_error(e) and not isinstance(e, TypeError):
            raise UserError(forward_fault(e, f"model ({type(model).__name__})")) from None
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        if isinstance(x, dict):
            raise UserError(f"model: the model cannot take the data's batches: keyword inputs {shape_text(x)} gave "
                            f"{type(e).__name__}: {first}. Each key of the data's items except data.target_key goes "
                            "to forward() by name; make the keys match its arguments.") from None
        raise UserError(f"model: the model cannot take the data's batches: input of shape {tuple(x.shape)} "
                        f"[batch, channels, height, width] gave {type(e).__name__}: {first}. Make the data fit the "
                        f"model: data.channels (now {x.shape[1] if x.ndim > 1 else '?'}; 3 for RGB models), "
                        f"data.image_size (now {x.shape[-1]}), or the model's input arguments (e.g. "
                        "model.in_channels).") from None
    finally:
        model.train(was_training)
    check_fit(task, logits.float(), task.target(y, logits))


def nonfinite_loss_error(value: float, epoch: int, step: int, global_step: int, batch: tuple | None,
                         model: nn.Module, found_at: int | None = None) -> UserError:
    """Say what made the loss NaN/inf: the input, the targets, weights bad from the start, or the training.

    `batch` is (inputs, target) (None where it cannot be had again); `found_at` the step at which a
    deferred check found it (the weights have taken the steps in between, so they are not looked at).
    """
    where = f"training: the loss became {value} at epoch {epoch}, step {step}"
    if found_at is not None and found_at != global_step:
        where += f" (global step {global_step}; found at the check after global step {found_at}, trainer.sync_every_steps)"
    kept = " Files from finished epochs are kept."
    x, y = batch if batch is not None else (None, None)
    if x is not None and not finite(x):
        return UserError(f"{where}: the input batch itself holds NaN or inf. Check the dataset and data.mean / "
                         f"data.std.{kept}")
    if y is not None and not finite(y):
        return UserError(f"{where}: the batch's targets hold NaN or inf. Check the dataset's labels.{kept}")
    if global_step == 0 and found_at is None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        what = (f"the weights hold NaN or inf before any update ({', '.join(bad[:5])})" if bad
                else "the model's first forward pass, before any update")
        return UserError(f"{where}: {what}, so the learning rate is not the cause. Check the source weights "
                         f"(mode=plan; NaN weights are refused unless source.allow_nonfinite=true) and the model.{kept}")
    return UserError(f"{where}: training diverged. Lower optim.lr (or the group LRs), set trainer.grad_clip, or use "
                     f"trainer.precision=32.{kept}")


def refetch_batch(loader, batch: int, target_key: str) -> tuple | None:
    """Batch `batch` of this epoch again, (inputs, target), to tell bad data from divergence; None where it cannot be had."""
    from torch.utils.data import default_collate

    sampler = getattr(loader, "batch_sampler", None)
    try:
        if isinstance(sampler, ShuffledBatches):
            idx, dataset = sampler.global_batch(batch), loader.dataset
            items = dataset.__getitems__(idx) if hasattr(dataset, "__getitems__") else [dataset[i] for i in idx]
            got = (loader.collate_fn or default_collate)(items)
        elif isinstance(loader, Sequence):
            got = loader[batch]
        else:
            return None
        return split_batch(got, target_key)
    except Exception:  # the diagnosis must not hide the NaN itself
        return None
