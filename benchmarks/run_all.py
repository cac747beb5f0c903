"""Run the benchmarks and rewrite the README's benchmark table with what they measured.

    python benchmarks/run_all.py [--quick] [--all] [--only capture,analyze] [--no-readme]

By default runs the benchmarks of the core targets with the issues' workloads
(``capture``, ``effective``, ``analyze``, ``faithfulness``, ``learned_queries``; about 5 minutes on
a quiet 2-core machine, under 10; ``learned_queries`` first trains its model, under a minute, when
``analyses/learned_queries.py`` has not cached it); ``--all`` adds ``backends``, ``context_mixing``,
``dashboard`` (needs Chromium) and ``generation`` (needs inseq in its own venv); ``--quick``
runs fewer repeats (and smaller ``analyze`` / ``faithfulness`` workloads: a smoke test, its
figures are marked "quick"). Each script runs in its own process, prints the machine it ran on
(CPU model, threads, load average, precision) and ends with a ``RESULT`` line, which this script
parses; the README table between the ``benchmarks:start`` / ``benchmarks:end`` markers is then
rewritten: one row per benchmark with its figure, its target and ``met`` / ``missed``, and a line
stating the machine, the date and the load averages. Rows of benchmarks not run this time are kept
as they were. Exit status 1 if a benchmark failed (its row is kept, and the failure printed).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
README = ROOT / "README.md"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"

sys.path.insert(0, str(HERE))
from machine import cpu_model, load_average  # noqa: E402


def _f(x: str | None) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def fmt_capture(r: dict) -> tuple[str, bool]:
    ratio, eager = _f(r.get("ratio")), _f(r.get("eager_ratio"))
    ok = ratio <= 1.15 and ratio <= eager
    return f"**{ratio:.2f}x** SDPA (HF eager with `output_attentions` in the same run: {eager:.2f}x)", ok


def fmt_effective(r: dict) -> tuple[str, bool]:
    ratio = _f(r.get("ratio"))
    return f"**{ratio:.2f}x** the forward; LP mode {_f(r.get('lp_ms_per_row')):.0f} ms per row", ratio <= 0.5


def fmt_analyze(r: dict) -> tuple[str, bool]:
    eps, ov = _f(r.get("examples_per_s")), _f(r.get("overhead"))
    moon = "met" if ov <= 4 else "missed"
    return (f"**{eps:.1f} examples/s** ({ov:.1f}x the plain forward's time; moonshot <= 4x: {moon}); with raw "
            f"attention and the random baseline too: {_f(r.get('examples_per_s_with_baselines')):.1f} examples/s "
            f"({_f(r.get('overhead_with_baselines')):.1f}x)"), eps >= 20


def fmt_faithfulness(r: dict) -> tuple[str, bool]:
    sp = _f(r.get("speedup"))
    return f"**{sp:.1f}x** (identical values within 1e-5, asserted)", sp >= 3


def fmt_backends(r: dict) -> tuple[str, bool]:
    mem, tim = _f(r.get("smyrf_mem_ratio_2048")), _f(r.get("smyrf_time_ratio_4096"))
    return f"**{mem:.2f}x** peak memory at 2048, **{tim:.2f}x** time at 4096", mem <= 0.6 and tim <= 1


def fmt_learned_queries(r: dict) -> tuple[str, bool]:
    ratio = _f(r.get("ratio"))
    return f"**{ratio:.2f}x** the plain forward", ratio <= 1.5
def fmt_context_mixing(r: dict) -> tuple[str, bool]:
    alti, glob, vz = _f(r.get("alti_ratio")), _f(r.get("globenc_ratio")), _f(r.get("value_zeroing_ratio"))
    vzu = _f(r.get("value_zeroing_ratio_unpadded"))
    return (f"ALTI **{alti:.2f}x**, GlobEnc **{glob:.2f}x** a forward; value zeroing **{vz:.2f}** forwards per token "
            f"({vzu:.2f} against a length-sorted, unpadded forward)"), alti <= 3 and glob <= 3 and vz <= 1


def fmt_dashboard(r: dict) -> tuple[str, bool]:
    first, head = _f(r.get("first_draw_s")), _f(r.get("head_switch_s"))
    return f"**{first:.2f} s** to the example page, **{head:.2f} s** head switch", first <= 2 and head <= 0.5


def fmt_generation(r: dict) -> tuple[str, bool]:
    att, ig, diff = _f(r.get("speedup_attention")), _f(r.get("speedup_ig")), _f(r.get("max_abs_diff"))
    return (f"**{att:.2f}x** inseq's time for attention, **{ig:.2f}x** for IG; raw-attention scores agree to "
            f"{diff:.1e}"), att >= 1.5 and ig >= 1.0 and diff < 1e-5


#: name -> (what is compared, target, default args, quick args, formatter)
BENCHMARKS = {
    "capture": ("full capture (6 layers x 12 heads, values) vs plain SDPA forward, MiniLM, 16 x 128 tokens",
                "<= 1.15x SDPA and <= HF eager", [], ["--repeats", "3"], fmt_capture),
    "effective": ("effective attention for all 72 MiniLM heads at n = 256, batch 8 vs one forward",
                  "<= 0.5x", [], ["--repeats", "3"], fmt_effective),
    "analyze": ("`analyze` on 256 rotten-tomatoes test examples (capture, effective, norm, rollout + ERASER "
                "faithfulness of each, head stats, arrays of 50 examples) vs plain forward",
                ">= 20 examples/s (moonshot: <= 4x the forward)", [], ["--limit", "64", "--repeats", "1"], fmt_analyze),
    "faithfulness": ("ERASER AOPC (5 bins) for 64 examples, batched vs one forward per bin", ">= 3x", [],
                     ["--n", "16", "--repeats", "1"], fmt_faithfulness),
    "backends": ("one attention layer (12 heads, d_h 64), each backend vs dense eager, n = 512-4096",
                 "SMYRF 50 %: <= 0.6x memory at 2048, not slower at 4096", [], ["--repeats", "1"], fmt_backends),
    "learned_queries": ("capture of the decoder cross-attention + effective cross-attention of every decoder layer "
                        "vs the plain forward, trained set decoder (24 learned queries), 400 scenes",
                        "<= 1.5x", [], ["--repeats", "3"], fmt_learned_queries),
    "context_mixing": ("ALTI, GlobEnc, value zeroing (and norm_residual_ln, grad_rollout, attention_gradient) on 64 "
                       "rotten-tomatoes examples, batches of 16, vs one plain forward",
                       "ALTI, GlobEnc <= 3x; value zeroing <= 1 forward per input token", [], ["--repeats", "1"],
                       fmt_context_mixing),
    "dashboard": ("headless Chromium on a 500-example run", "first draw <= 2 s, head switch <= 0.5 s", [],
                  ["--examples", "100", "--repeats", "2"], fmt_dashboard),
    "generation": ("explain 4 x 10 generated SmolLM2 tokens (raw attention; IG 16 steps) vs inseq 0.7.1 in its own "
                   "venv, generation included", "attention >= 1.5x, IG >= 1.0x inseq, scores within 1e-5", [],
                   ["--repeats", "1"], fmt_generation),
}
CORE = ("capture", "effective", "analyze", "faithfulness", "learned_queries")


def parse_result(text: str) -> dict[str, str] | None:
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return None
    return dict(kv.split("=", 1) for kv in lines[-1].split()[1:] if "=" in kv)


def run_one(name: str, quick: bool, timeout: float) -> tuple[dict | None, str, float]:
    _, _, args, quick_args, _ = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / f"{name}.py"), *(quick_args if quick else args)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(f"\n=== {name}: {' '.join(cmd[1:])}  (load average {load_average()})", flush=True)
    t0 = time.perf_counter()
    out: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Loading weights" in line or not line.strip():
                continue
            out.append(line)
            print("  " + line, end="", flush=True)
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = -1
    seconds = time.perf_counter() - t0
    text = "".join(out)
    res = parse_result(text) if rc == 0 else None
    if res is None:
        print(f"=== {name} FAILED (exit status {rc}) after {seconds:.0f} s", flush=True)
    else:
        print(f"=== {name}: {seconds:.0f} s", flush=True)
    return res, text, seconds


def table_rows(block: str) -> dict[str, str]:
    """Existing README rows by benchmark name (from the `benchmarks/<name>.py` cell)."""
    rows = {}
    for line in block.splitlines():
        m = re.match(r"\|\s*`benchmarks/(\w+)\.py`", line)
        if m:
            rows[m.group(1)] = line
    return rows


def render(results: dict[str, tuple[dict, float]], old_rows: dict[str, str], quick: bool, stamp: str,
           loads: tuple[str, str]) -> str:
    import torch

    tag = " (quick run: fewer repeats, smaller workloads)" if quick else ""
    head = [
        f"Last refreshed by `python benchmarks/run_all.py` on {stamp}{tag}: {cpu_model()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; load average (1, 5, 15 min) {loads[0]} before and {loads[1]} after. "
        "Each figure is a ratio to a baseline measured in the same run (medians of interleaved repeats); "
        "a loaded machine makes absolute times pessimistic and ratios noisy. Rows marked with an earlier "
        "date were not re-run.",
        "",
        "| script | what is compared (same run) | target | result | met? | machine, date, load (1 min) at end |",
        "|---|---|---|---|---|---|",
    ]
    body = []
    for name, (what, target, *_rest, fmt) in BENCHMARKS.items():
        if name in results:
            res, load_end = results[name]
            figure, ok = fmt(res)
            when = f"{cpu_model()} ({os.cpu_count()} cores), {stamp[:10]}{', quick' if quick else ''}, load {load_end}"
            body.append(f"| `benchmarks/{name}.py` | {what} | {target} | {figure} | {_verdict(ok)} | {when} |")
        elif name in old_rows:
            body.append(old_rows[name])
    return "\n".join(head + body)


def rewrite_readme(table: str) -> None:
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{README} has no {START} ... {END} markers; add them around the benchmark table")
    pre, rest = text.split(START, 1)
    _, post = rest.split(END, 1)
    README.write_text(pre + START + "\n" + table + "\n" + END + post, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller workloads (smoke test)")
    ap.add_argument("--all", action="store_true", help="also run backends.py, context_mixing.py, dashboard.py and "
                                                        "generation.py (needs the inseq venv, see its docstring)")
    ap.add_argument("--only", help="comma-separated benchmark names (e.g. capture,effective)")
    ap.add_argument("--no-readme", action="store_true", help="print the table, do not rewrite README.md")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per benchmark before it is stopped")
    args = ap.parse_args()
    names = list(CORE) + (["backends", "context_mixing", "dashboard", "generation"] if args.all else [])
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    results: dict[str, tuple[dict, float]] = {}
    failed = []
    t0 = time.perf_counter()
    for name in names:
        res, _, _ = run_one(name, args.quick, args.timeout)
        if res is None:
            failed.append(name)
        else:
            results[name] = (res, load_average().split()[0])
    old = table_rows(README.read_text(encoding="utf-8").split(START, 1)[-1].split(END, 1)[0]) if README.exists() else {}
    table = render(results, old, args.quick, stamp, (load_start, load_average()))
    print(f"\nall benchmarks: {time.perf_counter() - t0:.0f} s\n\n{table}")
    if results and not args.no_readme:
        rewrite_readme(table)
        print(f"\nrewrote the table in {README}")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
