"""Dashboard speed in a real browser: navigation -> example page drawn, and redraw after a head switch.

    .venv/bin/python benchmarks/dashboard.py [--examples 500] [--store 50] [--repeats 5]

The run folder is **synthesised** per docs/run-format.md with ``attnexplain.runs.RunWriter``
(tests/test_app.py::write_run): 500 examples, MiniLM's shape (6 layers x 12 heads), 12-64 tokens
per example, six methods, faithfulness and head tables, and attention arrays (raw, effective,
norm, rollout, flow) for the first ``--store`` examples, as ``analyze`` stores by default. (Running
the analyze engine on MiniLM for 500 examples would take many minutes on 2 cores; the dashboard
only reads the folder, so the timings do not depend on how it was made.)

Timings (headless Debian Chromium driven by playwright, app started with ``streamlit run``):

* first_draw_s: median over ``--repeats`` navigations, each a fresh page load of
  ``/explorer?run=...&example=<a different stored example>``, until every figure of the example
  (probabilities, layer x head grid, one head, norm, rollout, flow) is drawn, the token shading is
  shown and the script has finished. The very first navigation (cold server: imports, first
  table reads) is printed separately as ``cold_first_draw_s``.
* head_switch_s: median over ``--repeats`` head switches, from the click on the new head in the
  drop-down until the one-head figure shows it and the (fragment) rerun has finished.

Targets: first draw <= 2 s, head switch <= 0.5 s. The last line is
``RESULT first_draw_s=<x> head_switch_s=<y>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_app import write_run  # noqa: E402
from test_app_browser import (  # noqa: E402
    browser_page,
    browser_unavailable,
    click_option,
    no_exception,
    open_select,
    settled,
    streamlit_app,
)

METHODS = ["raw_attention", "effective_attention", "norm", "rollout", "gradient_x_input", "random"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--store", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--keep", help="write the run folder here (default: a temporary folder)")
    args = ap.parse_args()
    reason = browser_unavailable()
    if reason:
        sys.exit(f"cannot run the dashboard benchmark: {reason}")

    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.keep) if args.keep else Path(tmp) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not (runs / "bench" / "examples.parquet").exists():
            write_run(runs / "bench", n_examples=args.examples, store=args.store, layers=6, heads=12, min_len=12,
                      max_len=64, distribution=False, methods=METHODS, batch=64)
        print(f"run folder: {runs / 'bench'} ({args.examples} examples, {args.store} with arrays; "
              f"made in {time.perf_counter() - t0:.1f} s)")

        with streamlit_app(runs) as url, browser_page(height=2400) as page:
            examples = [f"ex-{i}" for i in range(min(args.store, args.repeats + 1))]
            draws = []
            for i, eid in enumerate(examples):
                t = time.perf_counter()
                page.goto(f"{url}/explorer?run=bench&example={eid}")
                settled(page, plots=6, text="One head", timeout=120)
                page.wait_for_function("(id) => document.body.innerText.includes('Example ' + id) && "
                                       "document.querySelector('.ax-tokens')", arg=eid, polling=50)
                draws.append(time.perf_counter() - t)
                no_exception(page)
                print(f"navigation {i} ({eid}): drawn in {draws[-1]:.2f} s{' (cold server)' if i == 0 else ''}")
            cold, warm = draws[0], draws[1:] or draws

            switches = []
            for r in range(args.repeats):
                head = str((r % 11) + 1)
                open_select(page, "Head")
                t = time.perf_counter()
                click_option(page, head)
                settled(page, plots=6, text=f"layer 5, head {head}", timeout=60)
                switches.append(time.perf_counter() - t)
                no_exception(page)
                print(f"head switch {r} (-> head {head}): {switches[-1]:.3f} s")

    first, switch = statistics.median(warm), statistics.median(switches)
    print(f"cold_first_draw_s={cold:.2f} (first navigation after the server started)")
    print(f"targets: first draw <= 2 s ({'met' if first <= 2 else 'MISSED'}), head switch <= 0.5 s "
          f"({'met' if switch <= 0.5 else 'MISSED'})")
    print(f"RESULT first_draw_s={first:.2f} head_switch_s={switch:.3f}")


if __name__ == "__main__":
    main()
