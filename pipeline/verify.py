"""verify-candle: check a checkpoint in Kyutai's Rust runtime (the `candle_bridge` extension).

Today: the loader report. The Rust `moshi` crate builds the LM and the Mimi from config.json,
and every tensor it asks for is compared with the files: missing, unexpected, wrong shape,
wrong dtype; then both models are loaded for real. Streaming parity against PyTorch is
added by issue #5 in this same module.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PROBLEMS = ("missing", "unexpected", "wrong_shape", "wrong_dtype")


class VerificationFailed(RuntimeError):
    """The checkpoint does not load cleanly in the Rust runtime; the message is the table."""


def candle_report(ckpt: str | Path, lm_dtype: str = "bf16") -> dict:
    """The Rust loader's report for a checkpoint directory (see candle_bridge/src)."""
    import candle_bridge

    return json.loads(candle_bridge.check_checkpoint(str(ckpt), lm_dtype))


def _describe(kind: str, item) -> str:
    if kind == "wrong_shape":
        return f"{item['name']}: expected {item['expected']}, file has {item['found']}"
    if kind == "wrong_dtype":
        return f"{item['name']}: {item['dtype']}"
    return str(item)


def format_report(report: dict, limit: int = 8) -> str:
    """A table a person can read: one row per model part, then each problem by name."""
    rows = [f"Candle loader report for {report['checkpoint']}",
            f"{'part':<6} {'file':<42} {'dtype':>5} {'expected':>8} {'in file':>8} "
            f"{'missing':>7} {'unexp.':>6} {'shape':>5} {'dtype':>5} {'loaded':>6} {'load s':>7}"]
    details = []
    for part in ("lm", "mimi"):
        r = report[part]
        counts = [len(r[k]) for k in PROBLEMS]
        rows.append(
            f"{part:<6} {Path(r['file']).name[:42]:<42} {r['expected_dtype']:>5} {r['expected_count']:>8} "
            f"{r['found_count']:>8} {counts[0]:>7} {counts[1]:>6} {counts[2]:>5} {counts[3]:>5} "
            f"{'yes' if r['loaded'] else 'NO':>6} {r['load_seconds']:>7.2f}"
        )
        for kind in PROBLEMS:
            for item in r[kind][:limit]:
                details.append(f"  {part} {kind}: {_describe(kind, item)}")
            if len(r[kind]) > limit:
                details.append(f"  {part} {kind}: ... and {len(r[kind]) - limit} more")
        if r.get("load_error"):
            details.append(f"  {part} load error: {r['load_error']}")
    verdict = "OK: the checkpoint loads cleanly in Kyutai's Rust runtime" if report["ok"] else "FAILED"
    return "\n".join(rows + details + [verdict])


def verify_candle(ckpt: str | Path, lm_dtype: str = "bf16") -> dict:
    """Print the loader report; raise VerificationFailed (with the table) if anything is off."""
    report = candle_report(ckpt, lm_dtype)
    table = format_report(report)
    if not report["ok"]:
        raise VerificationFailed(table)
    print(table)
    return report


# --- load time and memory, each runtime in a fresh process -----------------------------------

def _measure(runtime: str, ckpt: str) -> dict:
    start = time.perf_counter()
    if runtime == "torch":
        import torch

        from .models import load_lm, load_mimi

        lm = load_lm(ckpt, dtype=torch.bfloat16)
        load_mimi(ckpt)
        params = sum(p.numel() for p in lm.parameters())
    else:
        report = candle_report(ckpt)
        if not report["ok"]:
            raise VerificationFailed(format_report(report))
        params = None
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"runtime": runtime, "seconds": round(seconds, 2), "peak_rss_mib": round(peak_mib), "lm_params": params}


def measure_loads(ckpt: str | Path) -> list[dict]:
    """Load time and peak RAM of PyTorch (moshi) and Candle (candle_bridge), separate processes."""
    results = []
    for runtime in ("torch", "candle"):
        out = subprocess.run([sys.executable, "-m", "pipeline.verify", runtime, str(ckpt)],
                             check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


if __name__ == "__main__":  # used by measure_loads
    print(json.dumps(_measure(sys.argv[1], sys.argv[2])))
