"""Shared plumbing of the analysis scripts (not an analysis itself).

Every analysis writes into ``analyses/out/<name>/``:

* ``table.md``: a header (the claim tested, where it comes from, whether our numbers agree,
  the settings) and the Markdown table(s) of the run;
* ``figures.html``: the run's plotly figures in one page. plotly.js (4.7 MB) is not embedded:
  the page loads ``plotly.min.js`` from its own folder, which the script copies there from the
  installed ``plotly`` package (offline) and git ignores. After a fresh clone, either re-run the
  analysis or run ``python analyses/_common.py --plotlyjs`` to put the file back;
* ``manifest.json``: settings, model(s), data, package versions, date, runtime, git commit.

Helpers here use only the public API (``attnexplain.*``) and standard libraries.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting make LAPACK (the SVDs of effective attention) 40x
# slower on a shared, loaded machine; passive waiting costs nothing on an idle one. Only
# effective if set before torch is imported (the scripts import this module first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
OUT_ROOT = ROOT / "analyses" / "out"

PUNCTUATION = set(".,;:!?'\"`()[]{}-–—/\\…")


def analysis_parser(doc: str, *, batch_size: int) -> "argparse.ArgumentParser":
    """The command line every analysis shares (its own options are added after): ``--split``,
    ``--batch-size``, ``--threads``, ``--out`` and ``--quick`` (tiny settings for the smoke test)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="tiny settings for the smoke test")
    return p


def out_dir(name: str, override: str | os.PathLike | None = None) -> Path:
    path = Path(override) if override else OUT_ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def set_threads(threads: int | None = None) -> int:
    import torch

    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover
            threads = os.cpu_count() or 1
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    from attnexplain.runs.settings import package_versions

    out = dict(package_versions())
    try:
        import plotly

        out["plotly"] = plotly.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return None


class Run:
    """Times a run and writes its manifest."""

    def __init__(self, name: str, args: Any) -> None:
        self.name = name
        self.args = args
        self.t0 = time.perf_counter()
        self.started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        self.extra: dict[str, Any] = {}

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def manifest(self, out: Path, *, models: Any, data: Any, files: Sequence[str], **extra: Any) -> dict:
        settings = vars(self.args) if hasattr(self.args, "__dict__") else dict(self.args)
        man = {
            "analysis": self.name,
            "script": f"analyses/{self.name}.py",
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()},
            "models": models,
            "data": data,
            "started": self.started,
            "runtime_s": round(self.seconds, 1),
            "versions": versions(),
            "git_commit": git_commit(),
            "machine": {"platform": platform.platform(), "cpus": _cpus(), "torch_threads": _threads(),
                        "load_average_1m": _load()},
            "files": list(files),
            **self.extra,
            **extra,
        }
        (out / "manifest.json").write_text(json.dumps(man, indent=2, default=_json_default) + "\n")
        return man


def _json_default(x: Any) -> Any:
    import numpy as np

    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        return None


def md_table(df: Any, *, headers: Mapping[str, str] | None = None, digits: int = 3, sci: Sequence[str] = ()) -> str:
    from attnexplain.runs.markdown import format_markdown_table

    return format_markdown_table(df, headers=headers, digits=digits, sci=sci)


def write_table(out: Path, title: str, header: Sequence[str], sections: Sequence[tuple[str, str]],
                footer: Sequence[str] = ()) -> Path:
    """``table.md``: ``# title``, header paragraphs, then ``## section`` + table for each section."""
    lines = [f"# {title}", ""]
    for h in header:
        lines += [h, ""]
    for name, table in sections:
        if name:
            lines += [f"## {name}", ""]
        lines += [table.rstrip(), ""]
    for f in footer:
        lines += [f, ""]
    path = out / "table.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def load(name: str):
    """A model by name for an analysis; ``testing:<arch>`` gives a tiny random model (tests)."""
    if name.startswith("testing:"):
        from attnexplain.testing import tiny_model

        return tiny_model(name.split(":", 1)[1])
    from attnexplain.runs.analyze import load_model_for_run

    return load_model_for_run(name)


def plotly_js_path() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.exists():  # pragma: no cover
        raise FileNotFoundError(f"plotly.min.js not found in the plotly package ({path})")
    return path


def write_figures(out: Path, figures: Sequence[tuple[str, Any]], title: str) -> Path:
    """One HTML page with all figures; plotly.js is loaded from ``plotly.min.js`` next to it
    (copied here from the plotly package; git-ignored by the folder's ``.gitignore``)."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>",
             "<script src='plotly.min.js'></script>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}</style></head><body>",
             f"<h1>{title}</h1>",
             "<p>Needs <code>plotly.min.js</code> in this folder: re-run the analysis, or "
             "<code>python analyses/_common.py --plotlyjs</code>.</p>"]
    for caption, fig in figures:
        parts.append(f"<h2>{caption}</h2>")
        parts.append(fig.to_html(include_plotlyjs=False, full_html=False))
    parts.append("</body></html>")
    path = out / "figures.html"
    path.write_text("\n".join(parts))
    shutil.copyfile(plotly_js_path(), out / "plotly.min.js")
    (out / ".gitignore").write_text("plotly.min.js\n")
    return path


def ensure_plotlyjs() -> list[Path]:
    """Copy plotly.min.js into every analysis output folder that has a figures.html."""
    done = []
    for html in OUT_ROOT.glob("*/figures.html"):
        shutil.copyfile(plotly_js_path(), html.parent / "plotly.min.js")
        done.append(html.parent)
    return done


def token_category(token: str, *, position: int, n: int, specials: set[str], first_is_special: bool = False) -> str:
    """``"[CLS]"``, ``"[SEP]"``, ``"punct"`` or ``"other"`` for one token.

    ``first_is_special``: the first token counts as ``"[CLS]"`` (causal LMs without a BOS token:
    the first position is their attention sink)."""
    specials = set(specials) | {"[CLS]", "[SEP]", "<s>", "</s>"}
    if first_is_special and position == 0:
        return "[CLS]"
    if token in specials:
        if token in ("[CLS]", "<s>", "<|im_start|>", "<|endoftext|>") and position == 0:
            return "[CLS]"
        if token in ("[SEP]", "</s>"):
            return "[SEP]"
        return "[CLS]" if position == 0 else "[SEP]"
    stripped = token.lstrip("Ġ▁").replace("##", "")
    if stripped and all(c in PUNCTUATION for c in stripped):
        return "punct"
    return "other"


def special_token_strings(tokenizer: Any) -> set[str]:
    out = set()
    for attr in ("cls_token", "sep_token", "bos_token", "eos_token", "pad_token"):
        tok = getattr(tokenizer, attr, None)
        if isinstance(tok, str):
            out.add(tok)
    return out


def texts_with_min_tokens(lm: Any, texts: Sequence[str], min_tokens: int) -> list[int]:
    """Indices of the texts with at least ``min_tokens`` tokens (special tokens included)."""
    ids = lm.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    return [i for i, x in enumerate(ids) if len(x) >= min_tokens]


def truncate_texts(lm: Any, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut (in characters) after its last token that fits in ``max_tokens`` tokens
    (special tokens included), using the fast tokenizer's offsets, so that the cut text
    tokenizes to at most ``max_tokens`` tokens. Tokenizers without offsets (the tiny test
    tokenizer: one token per character) cut at ``max_tokens - 2`` characters."""
    texts = list(texts)
    try:
        enc = lm.tokenizer(texts, return_offsets_mapping=True, truncation=True, max_length=max_tokens)
        offsets = enc["offset_mapping"]
    except (TypeError, KeyError, NotImplementedError, ValueError):
        return [t[: max(1, max_tokens - 2)] for t in texts]
    out = []
    for t, offs in zip(texts, offsets):
        ends = [int(e) for s, e in offs if e > s]
        out.append(t[: max(ends)] if ends else t)
    return out


#: methods whose scores are signed (the sign says which class a token pushes towards): their
#: absolute values rank the tokens for plausibility
SIGNED_METHODS = ("gradient_x_input", "integrated_gradients", "occlusion")


def explanations_with_faithfulness(lm: Any, texts: Sequence[str], methods: Sequence[str], batch_size: int, seed: int,
                                   variants: Mapping[str, Any] | None = None):
    """Scores of ``methods`` per example (``explain_batch`` in batches of ``batch_size``, each
    explaining its predicted class) and the ERASER result (``attnexplain.ablations.faithfulness``,
    delete removal) of those scores with the seeded random ranking as baseline.

    ``variants``: ``{label: method object}`` -- registered methods with other options, scored
    under ``label`` (explaining the same predicted classes).

    Returns ``(scores {method or label: [array per example]}, FaithfulnessResult)``."""
    import numpy as np

    from attnexplain.ablations import content_positions, faithfulness, random_rankings, special_token_ids
    from attnexplain.methods import explain_batch

    variants = dict(variants or {})
    scores: dict[str, list] = {m: [] for m in [*methods, *variants]}
    targets: list[int] = []
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(texts), batch_size), desc="explanations", unit="batch", file=sys.stderr,
                  dynamic_ncols=True, disable=None):  # disable=None: no bar when stderr is not a terminal
        enc = lm.tokenize(list(texts[s : s + batch_size]))
        sc, tgt, _ = explain_batch(lm, enc, list(methods))
        for label, method in variants.items():
            sc[label] = explain_batch(lm, enc, [method], target=tgt)[0][method.name]
        for m in scores:
            scores[m].extend(np.asarray(x, dtype=float) for x in sc[m])
        targets.extend(int(t) for t in tgt.tolist())
    batch = lm.tokenize(list(texts))
    specials = special_token_ids(lm.tokenizer)
    lengths = [len(content_positions([t for t, k in zip(row, mk) if k], specials))
               for row, mk in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())]
    print(f"[{time.strftime('%H:%M:%S')}] ERASER faithfulness of {len(scores) + 1} rankings x {len(texts)} texts",
          file=sys.stderr, flush=True)
    res = faithfulness(lm, batch, scores, rankings={"random": random_rankings(lengths, seed)}, target=targets,
                       mode="delete")
    return scores, res


def plausibility_table(lm: Any, texts: Sequence[str], rationales: Sequence[Any], scores: Mapping[str, Sequence[Any]],
                       seed: int):
    """Plausibility of each method's token scores against gold word rationales, one row per
    (example, method), plus a seeded ``random`` row per example.

    Token scores are summed to whitespace words (``word_index_of_tokens`` on the fast tokenizer's
    offsets, ``word_scores``; absolute values first for :data:`SIGNED_METHODS`) and scored with
    ``attnexplain.metrics.plausibility`` (top-|gold| token F1, AUPRC). Raises ``ValueError`` when a
    method has a different number of scores than the text has tokens."""
    import numpy as np
    import pandas as pd

    from attnexplain.data.words import word_index_of_tokens, word_scores
    from attnexplain.metrics import plausibility

    rng = np.random.default_rng(seed)
    rows = []
    for i, (t, gold) in enumerate(zip(texts, rationales)):
        enc = lm.tokenizer(t, return_offsets_mapping=True)
        widx = word_index_of_tokens(t, enc["offset_mapping"])
        n_words = len(t.split())
        per = {m: scores[m][i] for m in scores}
        per["random"] = rng.random(len(widx))
        for m, sc in per.items():
            if len(sc) != len(widx):
                raise ValueError(f"{m}: {len(sc)} scores for {len(widx)} tokens (example {i})")
            sc = np.abs(np.asarray(sc, dtype=float)) if m in SIGNED_METHODS else sc
            rows.append({"example": i, "method": m, **plausibility(word_scores(sc, widx, n_words), gold)})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    if "--plotlyjs" in sys.argv:
        for d in ensure_plotlyjs():
            print(f"plotly.min.js -> {d}")
    else:
        print(__doc__)
