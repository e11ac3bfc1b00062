"""A saved adapter reused (source.adapter) and adapter runs resumed: mode=eval / predict / export of a run's
adapter/ give that run's numbers and weights, mode=train goes on from it, a resumed run ends bitwise as an
uninterrupted one; wrong folders and adapters that do not fit fail with one message."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import compose_config, read_json, stop_after
from transfer_pipeline.errors import Interrupted, UserError

FAST = ("trainer.limit_train_batches=4", "trainer.limit_val_batches=2")
LORA4 = ("adapters=lora", "adapters.rank=4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished adapters=lora run (2 epochs): its folder and summary."""
    from transfer_pipeline.run.lifecycle import run

    run_dir = tmp_path_factory.mktemp("trained")
    summary = run(compose_config(*LORA4, "trainer.epochs=2", *FAST), run_dir)
    assert summary["status"] == "completed"
    return run_dir, summary


def same_tensors(a, b) -> bool:
    wa, wb = load_file(a), load_file(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_eval_of_the_saved_adapter_gives_the_runs_final_val_metrics(run_pipeline, trained):
    run_dir, train_summary = trained
    summary, out = run_pipeline("mode=eval", f"source.adapter={run_dir / 'adapter'}", *FAST)
    assert summary["status"] == "evaluated" and summary["eval_split"] == "val"
    assert summary["val_acc"] == pytest.approx(train_summary["val_acc"], abs=1e-9)
    assert summary["val_loss"] == pytest.approx(train_summary["val_loss"], rel=1e-6)
    saved = summary["source_adapter"]
    assert saved["folder"] == str(run_dir / "adapter") and saved["rank"] == 4
    assert saved["bytes"] == train_summary["adapters"]["adapter_bytes"] and len(saved["sha256"]) == 64
    assert read_json(out / "eval.json")["val_acc"] == summary["val_acc"]


def test_eval_without_the_adapter_is_not_the_runs_numbers(run_pipeline, trained):
    """The check above would pass with the adapter ignored only if the base gave the same numbers: it does not."""
    _, train_summary = trained
    summary, _ = run_pipeline("mode=eval", *FAST)  # the base with its fresh head
    assert summary["val_loss"] != pytest.approx(train_summary["val_loss"], rel=1e-3)


def test_export_writes_the_runs_merged_weights_and_no_adapter_copy(run_pipeline, trained):
    run_dir, _ = trained
    summary, out = run_pipeline("mode=export", f"source.adapter={run_dir / 'adapter'}")
    assert summary["status"] == "exported" and summary["adapters"]["merge_max_rel_diff"] <= 1e-4
    assert same_tensors(run_dir / "model.safetensors", out / "model.safetensors")  # the training run's merge, bitwise
    assert not (out / "adapter").exists()
    assert summary["source_adapter"]["sha256"] == read_json(out / "summary.json")["source_adapter"]["sha256"]


def test_predict_with_the_adapter_equals_predict_with_the_merged_weights(run_pipeline, trained, tmp_path):
    run_dir, _ = trained
    s1, a = run_pipeline("mode=predict", f"source.adapter={run_dir / 'adapter'}", run_dir=tmp_path / "a")
    s2, b = run_pipeline("mode=predict", f"source.path={run_dir / 'model.safetensors'}", "mapping=default",
                         run_dir=tmp_path / "b")
    assert s1["status"] == s2["status"] == "predicted"
    with open(a / "predictions.csv") as fa, open(b / "predictions.csv") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert len(ra) == len(rb) > 100 and list(ra[0]) == list(rb[0])
    assert [r["predicted"] for r in ra] == [r["predicted"] for r in rb]
    assert all(abs(float(x["probability"]) - float(y["probability"])) < 1e-5 for x, y in zip(ra, rb))


def test_train_goes_on_from_the_saved_adapter(run_pipeline, trained, tmp_path):
    """With a learning rate too small to move anything, the first epoch's val numbers are the saved adapter's;
    fresh adapters under the same config are far from them."""
    run_dir, train_summary = trained
    tiny = ("optim.lr=1e-12", "trainer.epochs=1", *FAST)
    summary, out = run_pipeline(*LORA4, f"source.adapter={run_dir / 'adapter'}", *tiny, run_dir=tmp_path / "on")
    assert summary["status"] == "completed" and summary["source_adapter"]["rank"] == 4
    assert summary["val_loss"] == pytest.approx(train_summary["val_loss"], rel=1e-5)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    fresh, _ = run_pipeline(*LORA4, *tiny, run_dir=tmp_path / "fresh")
    assert fresh["val_loss"] != pytest.approx(train_summary["val_loss"], rel=1e-2)


@pytest.mark.parametrize("overrides, message", [
    (("adapters=lora",), r"not the one adapters=lora asks for:\n  rank: 4 in the adapter, 8 in the config"),
    ((*LORA4, "adapters.targets=[block2]"), r"targets: \['block1\.0', 'block2\.0', 'stem\.0'\] in the adapter, "
                                           r"\['block2\.0'\] in the config"),
    ((*LORA4, "freeze.trainable=[]"), r"head \(modules_to_save; freeze\.trainable\): \['head'\] in the adapter, \[\] "
                                     "in the config"),
    ((), r"mode=train trains the adapter on, which needs it described: add adapters=lora adapters\.rank=4 "
         r"adapters\.alpha=16"),
    (("mode=eval", "adapters=dora", "adapters.rank=4"), r"method: lora in the adapter, dora in the config"),
    (("mode=eval", "model.num_classes=3", "data.classes=[7,8,9]"),
     r"head\.weight is \(5, 64\) in the adapter and \(3, 64\) here"),
])
def test_an_adapter_that_does_not_fit_fails_the_run(run_pipeline, trained, overrides, message):
    run_dir, _ = trained
    with pytest.raises(UserError, match=message):
        run_pipeline(f"source.adapter={run_dir / 'adapter'}", *FAST, *overrides)  # each fails before training


def test_missing_or_wrong_folders_fail_the_run(run_pipeline, trained, tmp_path):
    run_dir, _ = trained
    with pytest.raises(UserError, match=r"^source\.adapter: no such file: .*nowhere"):
        run_pipeline("mode=eval", f"source.adapter={tmp_path / 'nowhere'}", run_dir=tmp_path / "a")
    assert read_json(tmp_path / "a" / "summary.json")["status"] == "failed"
    with pytest.raises(UserError, match=r"has no adapter_config\.json.*has one: source\.adapter=.*adapter"):
        run_pipeline("mode=eval", f"source.adapter={run_dir}", run_dir=tmp_path / "b")
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "adapter", broken)
    (broken / "adapter_model.safetensors").chmod(0o644)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(UserError, match=r"^source\.adapter: .*adapter_model\.safetensors is truncated or not safetensors"):
        run_pipeline("mode=export", f"source.adapter={broken}", run_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "model.safetensors").exists()


def rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in csv.DictReader(f)]


EMA = ("trainer.ema.decay=0.9", "trainer.monitor=ema_val_loss", "trainer.final_weights=best")


@pytest.mark.parametrize("method, more", [("lora", ()), ("dora", ()), ("lora", EMA)], ids=["lora", "dora", "lora-ema"])
def test_an_interrupted_adapter_run_resumes_bitwise(run_pipeline, tmp_path, monkeypatch, method, more):
    args = (f"adapters={method}", "adapters.rank=4", "trainer.epochs=3", *FAST, *more)
    reference, ref_dir = run_pipeline(*args, run_dir=tmp_path / "reference")
    with monkeypatch.context() as m:
        stop_after(m, 6)  # inside the second epoch
        with pytest.raises(Interrupted):
            run_pipeline(*args, run_dir=tmp_path / "stopped")
    stopped = read_json(tmp_path / "stopped" / "summary.json")
    assert stopped["status"] == "interrupted" and "trainer.resume=auto" in stopped["resume_command"]
    position = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["epoch"] == 1 and position["step_in_epoch"] > 0
    summary, out = run_pipeline(*args, "trainer.resume=auto", run_dir=tmp_path / "stopped")
    assert summary["status"] == "completed"
    assert same_tensors(ref_dir / "adapter" / "adapter_model.safetensors", out / "adapter" / "adapter_model.safetensors")
    assert same_tensors(ref_dir / "model.safetensors", out / "model.safetensors")
    assert same_tensors(ref_dir / "checkpoints" / "last.safetensors", out / "checkpoints" / "last.safetensors")
    assert rows(ref_dir) == rows(out) and summary["val_loss"] == reference["val_loss"]
    if more:
        assert same_tensors(ref_dir / "checkpoints" / "ema.safetensors", out / "checkpoints" / "ema.safetensors")


def test_ema_with_adapters_exports_the_ema_weights_as_the_plain_path_does(run_pipeline, tmp_path):
    """trainer.monitor=ema_* with final_weights=best: best.safetensors is the EMA's (as without adapters), and
    adapter/ and the merged model.safetensors are made from it; the frozen base is the same in the EMA."""
    summary, run_dir = run_pipeline("adapters=lora", "adapters.rank=4", "trainer.epochs=3", *FAST, *EMA,
                                    run_dir=tmp_path / "ema")
    assert summary["status"] == "completed" and summary["best_epoch"] is not None
    best = next(r for r in rows(run_dir) if int(r["epoch"]) == summary["best_epoch"])
    ema, last = (load_file(run_dir / "checkpoints" / f) for f in ("ema.safetensors", "last.safetensors"))
    assert ema.keys() == last.keys() and any("lora_A" in k for k in ema)
    assert all(torch.equal(ema[k], last[k]) for k in ema if "base_layer" in k or "original_module" in k)
    assert not all(torch.equal(ema[k], last[k]) for k in ema if "lora_" in k)  # the EMA is not the last weights
    evaluated, _ = run_pipeline("mode=eval", f"source.adapter={run_dir / 'adapter'}", *FAST, run_dir=tmp_path / "eval")
    assert evaluated["val_loss"] == pytest.approx(float(best["ema_val_loss"]), rel=1e-5)
    assert evaluated["val_loss"] != pytest.approx(float(best["val_loss"]), rel=1e-3)
