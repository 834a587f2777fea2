"""Child process of the benchmarks: one run of one candidate, its peak memory as JSON.

Usage: ``python -m qkv.bench._memory_probe '{"name": ..., "mode": ..., "n": ..., ...}'``; a spec
with ``"section"`` names a long-context contender (:mod:`qkv.bench.long_context`: a
window, backend options) and runs its forward call.
"""

from __future__ import annotations

import gc
import json
import sys

import torch

from qkv.bench.attention import build_run, candidate_by_key, make_inputs
from qkv.bench.measure import peak_rss_bytes, peak_tensor_bytes, reset_peak_rss, rss_bytes


def main() -> None:
    spec = json.loads(sys.argv[1])
    device = spec.get("device", "cpu")
    q, k, v = make_inputs(spec["n"], spec["heads"], spec["head_dim"], torch.float32, device)
    if "section" in spec:
        from qkv.bench.long_context import build_probe_run

        run = build_probe_run(spec, q, k, v)
    else:
        run = build_run(candidate_by_key(spec["name"], spec["mode"]), q, k, v, spec["causal"])
    torch.ones(64, 64) @ torch.ones(64, 64)  # start the thread pool before the baseline
    gc.collect()
    if device == "cuda":
        baseline = torch.cuda.memory_allocated()
        peak = peak_tensor_bytes(run, device)[0]
    else:
        baseline = rss_bytes()
        if not reset_peak_rss():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); Linux only")
        run()
        peak = peak_rss_bytes() - baseline
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": baseline}))


if __name__ == "__main__":
    main()
