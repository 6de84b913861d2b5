"""Fails (exit 1) when an eval summary falls below a recorded baseline by more than its tolerance.

usage: python3 eval/check_baseline.py SUMMARY_JSON BASELINE_JSON

The baseline records, per mode and metric, the figure measured on each machine and a tolerance:
  {"machines": {"<machine>": "<description>", ...},
   "modes": {"<mode>": {"<metric>": {"recorded": {"<machine>": 0.7238, ...}, "tolerance": 0.008}}}}
A run passes a metric when it is at least the lowest recorded figure minus the tolerance. The
tolerances come from measured spread (see the baseline's `_note` and eval/README.md): dense and
fused metrics move with the CPU's int8 kernels and with HNSW's parallel build; lexical metrics do
not depend on the CPU. Figures above the recorded ones never fail.
"""
import json
import sys

if len(sys.argv) != 3:
    sys.exit(__doc__)
summary = json.load(open(sys.argv[1]))
baseline = json.load(open(sys.argv[2]))
failed = False
print(f"{'':4} {'mode':<16} {'metric':<10} {'got':>7}  {'floor':>7}  recorded (machine: figure)")
for mode, metrics in sorted(baseline["modes"].items()):
    got_mode = summary["modes"].get(mode)
    if got_mode is None:
        print(f"FAIL {mode}: missing from {sys.argv[1]}")
        failed = True
        continue
    for metric, spec in sorted(metrics.items()):
        recorded = spec["recorded"]
        floor = min(recorded.values()) - spec["tolerance"]
        got = got_mode[metric]
        ok = got >= floor
        figures = ", ".join(f"{m}: {v:.4f}" for m, v in sorted(recorded.items()))
        print(f"{'ok  ' if ok else 'FAIL'} {mode:<16} {metric:<10} {got:.4f}  {floor:.4f}  {figures}")
        failed |= not ok
sys.exit(1 if failed else 0)
