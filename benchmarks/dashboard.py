"""Dashboard speed in a real browser: navigation -> example page drawn, and redraw after a head switch.

    .venv/bin/python benchmarks/dashboard.py [--examples 500] [--store 50] [--repeats 5]

The run folder is **synthesised** per docs/run-format.md with ``attnexplain.runs.RunWriter``
(tests/test_app.py::write_run): 500 examples, MiniLM's shape (6 layers x 12 heads), 12-64 tokens
per example, six methods, faithfulness and head tables, and attention arrays (raw, effective,
norm, rollout, flow) for the first ``--store`` examples, as ``analyze`` stores by default. (Running
the analyze engine on MiniLM for 500 examples would take many minutes on 2 cores; the dashboard
only reads the folder, so the timings do not depend on how it was made.)

Timings (headless Debian Chromium driven by playwright, app started with ``streamlit run``), each
until every figure of the example view is drawn (probabilities, layer x head grid, one head), the
token shading is shown and the script run has finished:

* page_nav_s (reported as first_draw_s): in the running dashboard, click "Example explorer" in the
  sidebar (coming from the Ablations page; the explorer opens on the example picked before, a
  different one each repeat) until the example page is drawn. This is how users move around:
  Streamlit switches pages without reloading the browser page.
* url_load_s: a full browser load of ``/explorer?run=bench&example=<id>`` (a different example each
  time): also loads and starts Streamlit's frontend and plotly.js (several MB of JavaScript).
* cold_url_load_s: the first such load after the server started (imports, first table reads).
* example_switch_s: choosing another example in the explorer's drop-down.
* head_switch_s: from the click on a new head in the drop-down until the one-head figure shows it
  (a Streamlit fragment: only that part of the page reruns).

Targets: first draw <= 2 s, head switch <= 0.5 s. The machine's load average is printed: on a
shared 2-core machine the browser's share of the CPU, not the app's Python work, dominates. The
last line is ``RESULT first_draw_s=<x> head_switch_s=<y>``.
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
    nav,
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
            R = args.repeats
            ids = [f"ex-{i}" for i in range(min(args.store, 3 * R + 1))]

            def drawn(eid: str) -> None:
                settled(page, plots=3, text="One head, large", timeout=120)
                page.wait_for_function("(id) => document.body.innerText.includes('Example ' + id) && "
                                       "document.querySelector('.ax-tokens')", arg=eid, polling=20)
                no_exception(page)

            def timed_goto(eid: str) -> float:
                t = time.perf_counter()
                page.goto(f"{url}/explorer?run=bench&example={eid}")
                drawn(eid)
                return time.perf_counter() - t

            cold = timed_goto(ids[0])
            print(f"cold url load ({ids[0]}): {cold:.2f} s")
            url_loads = []
            for eid in ids[1:R + 1]:
                url_loads.append(timed_goto(eid))
                print(f"url load ({eid}): {url_loads[-1]:.2f} s")

            switches, navs = [], []
            for eid in ids[R + 1:2 * R + 1]:
                open_select(page, "Example", search=eid)
                t = time.perf_counter()
                click_option(page, eid + " ", prefix=True)
                drawn(eid)
                switches.append(time.perf_counter() - t)
                nav(page, "Ablations")
                settled(page, plots=2, text="Head ablation", timeout=120)
                t = time.perf_counter()
                nav(page, "Example explorer")
                drawn(eid)
                navs.append(time.perf_counter() - t)
                print(f"example switch -> {eid}: {switches[-1]:.2f} s; page navigation back to it: {navs[-1]:.2f} s")

            heads = []
            for r in range(R):
                head = str((r % 11) + 1)
                open_select(page, "Head")
                t = time.perf_counter()
                click_option(page, head)
                settled(page, plots=3, text=f"layer 5, head {head}", timeout=60)
                heads.append(time.perf_counter() - t)
                no_exception(page)
                print(f"head switch -> head {head}: {heads[-1]:.3f} s")

    med = statistics.median
    first, head = med(navs), med(heads)
    from machine import print_machine

    print_machine("float16 stored arrays (browser timings)", "end")
    print(f"cold_url_load_s={cold:.2f} url_load_s={med(url_loads):.2f} example_switch_s={med(switches):.2f} "
          f"page_nav_s={first:.2f} head_switch_s={head:.3f} (medians of {R})")
    print(f"targets: first draw <= 2 s ({'met' if first <= 2 else 'MISSED'}), head switch <= 0.5 s "
          f"({'met' if head <= 0.5 else 'MISSED'})")
    print(f"RESULT first_draw_s={first:.2f} head_switch_s={head:.3f}")


if __name__ == "__main__":
    main()
