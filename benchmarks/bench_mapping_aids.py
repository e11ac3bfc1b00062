"""What `mapping.suggest` and `mapping.verify` cost and achieve, against the plan's own time.

    python benchmarks/bench_mapping_aids.py               # the five model pairs and the two scale rows
    python benchmarks/bench_mapping_aids.py --runs 5      # medians of 5 timings (default 3)

Part 1, the five pairs of tests/model_pairs.py (a user's model and someone else's layout): with no
rules, the plan; then the suggested rules, planned with the pair's op rules and the renames that the suggestion
lists as ambiguous (ALBERT's two LayerNorms: the only rules a person still writes); the tensors left unloaded; mapping.verify (module by module and the final output) on
the loaded target; and the same verify after two same-shaped tensors are swapped (must fail).

Part 2, cost at scale: a ~300-tensor CNN (torchvision MobileNetV2 -> timm, 314 tensors) and a
~1,000-tensor transformer (a 60-layer Hugging Face BERT, its token-type embedding zeroed, -> DistilBERT,
built from configs, small width): plan, suggest and verify seconds, median of `--runs`, in this process (imports excluded).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from transfer_pipeline.mapping.apply import describe_target, target_meta  # noqa: E402
from transfer_pipeline.mapping.plan import plan_load  # noqa: E402
from transfer_pipeline.mapping.suggest import suggest_rules  # noqa: E402
from transfer_pipeline.mapping.verify import verify_outputs  # noqa: E402
from transfer_pipeline.schema import MappingConfig, OnMismatch, SourceConfig  # noqa: E402
from transfer_pipeline.tensor_meta import meta_of  # noqa: E402

import transfer_pipeline as tp  # noqa: E402
from model_pairs import PAIRS, Pair  # noqa: E402

SKIP = MappingConfig(on_mismatch=OnMismatch.skip)


def timed(fn, runs: int):
    """(result of the last call, median seconds)."""
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def aids(pair: Pair, runs: int) -> dict:
    src, tgt = meta_of(pair.source.state_dict()), target_meta(pair.target)
    info = describe_target(pair.target)
    mapping = replace(SKIP, rules=list(pair.op_rules) + list(pair.hand_rules))
    plan, t_plan = timed(lambda: plan_load(src, tgt, mapping, SourceConfig(), info), runs)
    got, t_suggest = timed(lambda: suggest_rules(src, tgt, plan, mapping, SourceConfig(), info), runs)
    rules = list(pair.op_rules) + list(pair.hand_rules) + got.rules
    report = tp.load_weights(pair.target, pair.source, rules=rules, on_mismatch="skip")
    result, t_verify = timed(lambda: verify_outputs(pair.source, pair.target, report.plan, pair.inputs,
                                                    source_output=pair.source_output), runs)
    return {"tensors": len(tgt), "before": len(plan.entries), "rules": len(got.rules), "ambiguous": len(got.ambiguous),
            "hand": len(pair.op_rules) + len(pair.hand_rules),
            "notes": got.notes, "after": len(report.plan.entries), "missing": list(report.plan.missing),
            "verify": result, "broken": broken(pair, rules), "t_plan": t_plan, "t_suggest": t_suggest,
            "t_verify": t_verify}


def broken(pair: Pair, rules: list) -> str:
    """Verify after a wrong load: two loaded same-shaped tensors (of different values) swapped in the target."""
    state = pair.target.state_dict()
    by_shape: dict = {}
    for name, t in state.items():  # matrices, else norm weights; not biases (an LSTM sums bias_ih and bias_hh)
        if t.is_floating_point() and (t.dim() >= 2 or name.endswith("weight")) and "running_" not in name:
            by_shape.setdefault((t.dim() < 2, tuple(t.shape)), []).append(name)
    pairs = [(a, b) for key in sorted(by_shape, key=lambda k: k[0]) for names in [by_shape[key]]
             for a, b in zip(names, names[1:]) if not torch.equal(state[a], state[b])]
    if not pairs:
        return "no same-shaped tensors to swap"
    a, b = pairs[len(pairs) // 2]
    report = tp.load_weights(pair.target, pair.source, rules=rules, on_mismatch="skip")
    with torch.no_grad():
        ta, tb = pair.target.state_dict()[a], pair.target.state_dict()[b]
        saved = ta.clone()
        ta.copy_(tb), tb.copy_(saved)
    result = verify_outputs(pair.source, pair.target, report.plan, pair.inputs, source_output=pair.source_output)
    return f"swapped {a} <-> {b}: " + ("PASSED (wrong!)" if result.ok else f"fails at {result.first_difference}")


def scale_pairs():
    import timm
    import torchvision
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    cnn = Pair(torchvision.models.mobilenet_v2(), timm.create_model("mobilenetv2_100", pretrained=False).eval(),
               torch.randn(2, 3, 96, 96))
    layers, width = 60, 64
    bert = BertModel(BertConfig(vocab_size=1000, hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                                intermediate_size=4 * width, type_vocab_size=1, hidden_act="gelu"),
                     add_pooling_layer=False).eval()
    with torch.no_grad():  # DistilBERT has no token types: with BERT's zeroed, both compute the same function
        bert.embeddings.token_type_embeddings.weight.zero_()
    distil = DistilBertModel(DistilBertConfig(vocab_size=1000, dim=width, n_layers=layers, n_heads=4,
                                              hidden_dim=4 * width)).eval()
    text = Pair(bert, distil, {"input_ids": torch.randint(0, 1000, (2, 16))}, source_output="last_hidden_state")
    return {"CNN (MobileNetV2 tv -> timm)": cnn, f"transformer (BERT {layers} layers -> DistilBERT)": text}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pairs", nargs="*", default=list(PAIRS))
    args = ap.parse_args(argv)
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"python benchmarks/bench_mapping_aids.py --runs {args.runs}")
    print("\n## The five pairs (loaded = target tensors loaded / all)")
    for name in args.pairs:
        got = aids(PAIRS[name](), args.runs)
        v = got["verify"]
        print(f"\n{name}: loaded {got['before']}/{got['tensors']} before suggesting; suggested {got['rules']} rule(s), "
              f"{got['ambiguous']} ambiguous; with them and {got['hand']} hand-written rule(s): {got['after']}/{got['tensors']}"
              + (f" (unloaded: {', '.join(got['missing'][:4])})" if got["missing"] else ""))
        for note in got["notes"]:
            print(f"  note: {note}")
        print("  " + v.describe().replace("\n", "\n  "))
        print(f"  wrong load: {got['broken']}")
        print(f"  seconds: plan {got['t_plan']:.3f}, suggest {got['t_suggest']:.3f}, verify {got['t_verify']:.3f}")
    print("\n## Cost at scale (median seconds of --runs)")
    print("| pair | tensors | plan | suggest | verify (module by module) | verified |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, pair in scale_pairs().items():
        got = aids(pair, args.runs)
        print(f"| {name} | {got['tensors']} | {got['t_plan']:.3f} | {got['t_suggest']:.3f} | {got['t_verify']:.3f} | "
              f"{got['verify'].ok} ({got['after']}/{got['tensors']} loaded) |")


if __name__ == "__main__":
    main()
