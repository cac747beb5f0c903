"""Peak memory (RSS) of ``attnexplain analyze`` on 512-token inputs: batches capped at
``MAX_BATCH_TOKENS`` (4096 tokens: 8 inputs of 512) vs the same examples in one batch (what analyze
did before the cap when ``--limit`` was below ``--batch-size``).

    python benchmarks/analyze_memory.py [--limit 16] [--threads 1]

Model: the packaged MiniLM with a new 5-class head (the cost does not depend on the head); data:
the first ``--limit`` bbc-news test articles (in the fixed shuffled order; most are longer than
512 tokens and truncated). Default methods, faithfulness precision ``auto``. Each measurement runs
in its own process (``ru_maxrss`` of that process), the capped one first.

Measured on the 2-core machine of this project on 2026-11-30, ``--limit 16 --threads 2``: capped
5450 MB, one batch 7842 MB (README bound: 6 GB for 512-token inputs, any number of examples).

Last line: ``RESULT peak_rss_mb=<capped> baseline_peak_rss_mb=<one batch> limit=<n>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import attnexplain.runs.analyze as A
from attnexplain.models import load_model
limit, out, capped, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
if not capped:
    A.MAX_BATCH_TOKENS = None  # every example of the limit in one batch
lm = load_model("minilm", task="classification", labels=["business", "entertainment", "politics", "sport", "tech"])
t = time.time()
run = A.analyze(out, model=lm, dataset="bbc-news", limit=limit, batch_size=max(limit, 32), progress=False,
                threads=threads, log=lambda m: None)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.time() - t, "precision": run.manifest["faithfulness"]["precision"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"CPU: {cpu}; threads: {args.threads}; load average: {os.getloadavg()}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, capped in (("capped", "1"), ("one_batch", "0")):
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.limit), os.path.join(tmp, name), capped,
                                  str(args.threads)], capture_output=True, text=True, env=env, check=True)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{name}: peak RSS {results[name]['peak_rss_mb']:.0f} MB, {results[name]['seconds']:.0f} s, "
                  f"faithfulness precision {results[name]['precision']}")
    peak = results['capped']['peak_rss_mb']
    print(f"bound (README) 6000 MB for 512-token inputs: {'met' if peak <= 6000 else 'MISSED'} ({peak:.0f} MB)")
    print(f"RESULT peak_rss_mb={results['capped']['peak_rss_mb']:.0f} "
          f"baseline_peak_rss_mb={results['one_batch']['peak_rss_mb']:.0f} limit={args.limit}")


if __name__ == "__main__":
    main()
