"""How planning scales with the number of rules and of unmatched tensors (names and shapes only).

    python benchmarks/bench_plan_scale.py            # 1,000 / 10,000 / 100,000
    python benchmarks/bench_plan_scale.py 1000 3000  # other sizes

Prints, per size N, the seconds of:
- `rules`: N source tensors renamed by N literal rules (`from: enc\\.layers\\.7\\.w`, as a script or
  mapping.suggest writes them), the plan including prefix detection;
- `regex`: N tensors renamed by one regex rule;
- `suggest`: a plan of N tensors that match nothing by name, then mapping.suggest on it (past
  MAX_CELLS leaf pairs it says so and stops instead of aligning).
"""

from __future__ import annotations

import sys
import time

from transfer_pipeline.mapping.plan import plan_load
from transfer_pipeline.mapping.suggest import suggest_rules
from transfer_pipeline.schema.options import load_options
from transfer_pipeline.tensor_meta import TensorMeta


def metas(n: int, fmt: str) -> dict[str, TensorMeta]:
    return {fmt.format(i): TensorMeta((4 + i % 3,), "float32") for i in range(n)}


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(sizes: list[int]) -> None:
    print(f"{'N':>8}  {'rules s':>8}  {'regex s':>8}  {'suggest s':>9}")
    for n in sizes:
        src, tgt = metas(n, "enc.layers.{}.w"), metas(n, "dec.blocks.{}.w")
        literal = [{"from": f"enc\\.layers\\.{i}\\.w", "to": f"dec.blocks.{i}.w"} for i in range(n)]
        one = [{"from": r"enc\.layers\.(\d+)\.w", "to": r"dec.blocks.\1.w"}]
        rules_s = timed(lambda: plan_load(src, tgt, *load_options(rules=literal)))
        regex_s = timed(lambda: plan_load(src, tgt, *load_options(rules=one)))
        mapping, prefixes = load_options(on_mismatch="skip")
        plan = plan_load(src, metas(n, "dec.blocks.{}.v"), mapping, prefixes)
        suggest_s = timed(lambda: suggest_rules(src, metas(n, "dec.blocks.{}.v"), plan, mapping, prefixes))
        print(f"{n:>8,}  {rules_s:>8.2f}  {regex_s:>8.2f}  {suggest_s:>9.2f}", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10_000, 100_000])
