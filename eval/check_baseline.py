"""Fails (exit 1) when an eval summary falls below a recorded baseline.

usage: python3 eval/check_baseline.py SUMMARY_JSON BASELINE_JSON [TOLERANCE]
"""
import json
import sys

summary = json.load(open(sys.argv[1]))
baseline = json.load(open(sys.argv[2]))
tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
failed = False
for mode, metrics in baseline.items():
    if mode.startswith("_"):
        continue
    got = summary["modes"].get(mode)
    if got is None:
        print(f"FAIL {mode}: missing from {sys.argv[1]}")
        failed = True
        continue
    for key, floor in metrics.items():
        ok = got[key] >= floor - tolerance
        print(f"{'ok  ' if ok else 'FAIL'} {mode:<16} {key:<10} {got[key]:.4f} (recorded {floor:.4f})")
        failed |= not ok
sys.exit(1 if failed else 0)
