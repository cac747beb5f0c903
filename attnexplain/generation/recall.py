"""A language-model task with known evidence: key-value recall.

``"The code of Mara is 41. The code of Tobi is 17. The code of Lena is 63. The code of Mara is"``
-> ``" 41"``. The continuation can only come from one place of the prompt: the value stated for the
queried name. That value (its characters in the queried pair's sentence) is the **gold evidence**;
the queried name's earlier mention is recorded too (``key_span``). Names and two-digit values are
drawn without repetition per prompt (seeded), the queried pair's position is uniform.

:func:`recall_evaluation` measures, on a model:

1. **accuracy**: greedy decoding of ``len(answer tokens)`` tokens starts with the answer;
2. per method, **plausibility**: average precision (AUPRC, :func:`attnexplain.data.synthetic.auprc`)
   of each answer token's prompt scores against the gold tokens (prompt tokens overlapping the
   value's characters), averaged over the answer's tokens and the examples (whitespace-only answer
   tokens, e.g. the " " before digits a tokenizer splits off, are left out: they recall nothing);
3. per method, **faithfulness**: :func:`attnexplain.generation_faithfulness` (ERASER AOPC on
   each answer token's probability), with the random baseline.

Explanations are of the forced answer (``target=answer``), so examples the model gets wrong are
explained too (their answer is still the only continuation the prompt supports).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..models import LoadedModel


__all__ = ["RecallExample", "key_value_recall", "recall_evaluation", "recall_table", "gold_token_mask", "VALUE_SETS",
           "CHATML"]

NAMES = ("Mara", "Tobi", "Lena", "Omar", "Iris", "Hugo", "Nina", "Pavel", "Sara", "Kofi", "Yuki", "Ravi",
         "Elsa", "Bruno", "Dana", "Felix")


@dataclass(frozen=True)
class RecallExample:
    """One prompt: ``answer`` (with its leading space) and the character spans of the evidence."""

    prompt: str
    answer: str
    value_span: tuple[int, int]  # characters of the queried pair's value in the prompt
    key_span: tuple[int, int]  # characters of the queried name in its pair


#: value sets: two-digit numbers (the default) or words that are single tokens with a leading space
#: in common byte-level BPE vocabularies (SmolLM2's among them)
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "numbers": tuple(str(v) for v in range(10, 100)),
    "colors": ("red", "blue", "green", "black", "white", "yellow", "brown", "pink", "orange", "purple", "gray", "gold"),
    "cities": ("Paris", "Rome", "Berlin", "Madrid", "Tokyo", "London", "Cairo", "Vienna", "Dublin", "Lisbon",
               "Moscow", "Sydney"),
}


#: the ChatML turn format of SmolLM2-Instruct (and other ChatML models) for ``key_value_recall(chat=...)``
CHATML = "<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}"


def key_value_recall(n: int = 100, *, n_pairs: int = 3, seed: int = 0,
                     template: str = "The code of {name} is {value}.",
                     values: str | Sequence[str] = "numbers", question: str | None = None,
                     chat: str | None = None) -> list[RecallExample]:
    """``n`` seeded key-value recall prompts with ``n_pairs`` pairs each (see the module docstring).

    ``template`` holds ``{name}`` and ``{value}``; the query is the template up to ``{value}``
    (``"{name} has a {value} car."`` -> ``"... Mara has a"`` -> ``" red"``). ``values``: a name of
    :data:`VALUE_SETS` or the value strings themselves (drawn without repetition per prompt).
    ``question``: a question about the queried name put after the facts (``"What is {name}'s
    code?"``). ``chat``: a turn format with ``{user}`` (facts + question) and ``{assistant}`` (the
    query), e.g. :data:`CHATML`: the instruct model is asked, and its answer is started for it::

        <|im_start|>user\nMara's code is 41. Tobi's code is 17. What is Mara's code?<|im_end|>
        <|im_start|>assistant\nMara's code is                                   -> " 41"
    """
    if n_pairs < 1 or n_pairs > len(NAMES):
        raise ValueError(f"n_pairs must be in 1..{len(NAMES)}, got {n_pairs}")
    if "{name}" not in template or "{value}" not in template or template.index("{name}") > template.index("{value}"):
        raise ValueError(f"template must contain {{name}} and then {{value}}, got {template!r}")
    if chat is not None and ("{user}" not in chat or "{assistant}" not in chat or chat.index("{user}") > chat.index("{assistant}")):
        raise ValueError(f"chat must contain {{user}} and then {{assistant}}, got {chat!r}")
    pool = VALUE_SETS[values] if isinstance(values, str) else tuple(str(v) for v in values)
    if len(pool) < n_pairs:
        raise ValueError(f"{len(pool)} values for {n_pairs} pairs: give at least as many values as pairs")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        names = rng.sample(NAMES, n_pairs)
        values = rng.sample(pool, n_pairs)
        q = rng.randrange(n_pairs)
        parts, value_span, key_span = [], (0, 0), (0, 0)
        pos = 0
        for j, (name, value) in enumerate(zip(names, values)):
            sentence = template.format(name=name, value=value)
            if j == q:
                v0 = pos + len(template.split("{value}")[0].format(name=name))  # where the value starts
                value_span = (v0, v0 + len(str(value)))
                k0 = pos + sentence.index(name)
                key_span = (k0, k0 + len(name))
            parts.append(sentence)
            pos += len(sentence) + 1
        query = template.split("{value}")[0].format(name=names[q]).rstrip()
        user = " ".join(parts) + (" " + question.format(name=names[q]) if question else "")
        if chat:
            shift = len(chat.split("{user}")[0])
            prompt = chat.format(user=user, assistant=query)
            value_span = (value_span[0] + shift, value_span[1] + shift)
            key_span = (key_span[0] + shift, key_span[1] + shift)
        else:
            prompt = user + " " + query
        out.append(RecallExample(prompt=prompt, answer=" " + str(values[q]), value_span=value_span, key_span=key_span))
    return out


def gold_token_mask(tokenizer: Any, prompt: str, span: tuple[int, int]) -> np.ndarray:
    """(n_tokens,) bool: the prompt's tokens (as the model sees them, special tokens included)
    whose characters overlap ``span``. Needs a fast tokenizer (``return_offsets_mapping``)."""
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
    return np.array([e > s and s < span[1] and e > span[0] for s, e in enc["offset_mapping"]], dtype=bool)


def recall_evaluation(lm: LoadedModel, examples: Sequence[RecallExample], methods: Sequence[Any] | None = None, *,
                      batch_size: int = 8, seed: int = 0, bins: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracy, plausibility (AUPRC) and faithfulness (AOPC) per method on ``examples``.

    Returns ``{"accuracy", "n", "table" (pandas: method, auprc, comprehensiveness, sufficiency),
    "aopc" (per example, step, method, metric), "auprc" (per example, step, method), "correct" (per example: greedy decoding starts with
    the answer), "gold_fraction" (mean share of gold tokens among the prompt tokens: a random
    ranking's expected AUPRC)}``.
    """
    import pandas as pd

    from ..metrics import auprc
    from ..metrics import ERASER_BINS
    from .attribution import explain_generation
    from .decoding import generate
    from .erasure import generation_faithfulness

    examples = list(examples)
    correct = 0
    flags: list[bool] = []
    gold_fracs: list[float] = []
    ap_rows: list[tuple[int, int, str, float]] = []
    aopc_rows = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        prompts = [e.prompt for e in chunk]
        n_new = max(len(lm.tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in chunk)
        free = generate(lm, prompts, n_new, store_values=False, layers=[0])
        ok = [t.strip().startswith(e.answer.strip()) for t, e in zip(free.generated_texts, chunk)]
        flags += ok
        correct += sum(ok)
        ex = explain_generation(lm, prompts, methods, target=[e.answer for e in chunk])
        g = ex.generation

        def is_digit_step(i: int, t: int) -> bool:  # " 41" may be " ", "4", "1": the space is no recall
            return bool(g.generated_tokens[i][t].strip())

        for i, e in enumerate(chunk):
            gold = gold_token_mask(lm.tokenizer, e.prompt, e.value_span)
            gold_fracs.append(float(gold.mean()))
            for name, att in ex.attributions.items():
                n_p = att.n_prompt[i]
                if gold.size != n_p:
                    raise ValueError(f"gold mask has {gold.size} tokens, the prompt {n_p}: tokenizer offsets disagree")
                for t in g.steps(i):
                    if is_digit_step(i, t):
                        ap_rows.append((start + i, t, name, float(auprc(att.step_scores(i, t)[:n_p], gold))))
        faith = generation_faithfulness(lm, ex, seed=seed, bins=bins or ERASER_BINS, select=is_digit_step)
        aopc = faith.aopc.copy()
        aopc["example"] += start
        aopc_rows.append(aopc)
    aopc = pd.concat(aopc_rows, ignore_index=True)
    ap_df = pd.DataFrame(ap_rows, columns=["example", "step", "method", "auprc"])
    return {"accuracy": correct / len(examples), "n": len(examples), "table": recall_table(ap_df, aopc), "aopc": aopc,
            "auprc": ap_df, "correct": flags,
            "gold_fraction": float(np.mean(gold_fracs)) if gold_fracs else float("nan")}


def recall_table(auprc: Any, aopc: Any, examples: Sequence[int] | None = None):
    """Per method: mean AUPRC and mean comprehensiveness / sufficiency AOPC over the explained
    answer tokens (of ``examples`` only, when given), from :func:`recall_evaluation`'s
    per-token ``auprc`` and ``aopc`` tables."""
    import pandas as pd

    if examples is not None:
        keep = set(int(i) for i in examples)
        auprc = auprc[auprc["example"].isin(keep)]
        aopc = aopc[aopc["example"].isin(keep)]
    piv = aopc.pivot_table(index="method", columns="metric", values="aopc", aggfunc="mean")
    ap = auprc.groupby("method", sort=False)["auprc"].mean()
    rows = []
    for name in list(ap.index) + [m for m in piv.index if m not in ap.index]:
        rows.append({"method": name, "auprc": float(ap[name]) if name in ap.index else float("nan"),
                     "comprehensiveness": float(piv.loc[name, "comprehensiveness"]) if name in piv.index else float("nan"),
                     "sufficiency": float(piv.loc[name, "sufficiency"]) if name in piv.index else float("nan")})
    return pd.DataFrame(rows)
