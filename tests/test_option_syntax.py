"""One option syntax: ``name:key=value,...`` reads the same for backends (``--backend`` /
``--backend-option``) and interventions, through one parser."""

from __future__ import annotations

import pytest

from attnexplain.ablations import build_intervention
from attnexplain.backends.spec import BackendConfig, BackendSpecError, parse_backend, parse_key_values


def test_backend_string_equals_cli_options():
    spec = parse_backend("smyrf:n_hashes=2,q_cluster_size=8,k_cluster_size=8")
    cli = BackendConfig("smyrf", parse_key_values(["n_hashes=2", "q_cluster_size=8,k_cluster_size=8"]))
    assert spec == parse_backend(cli) == cli


def test_values_read_the_same_everywhere():
    assert parse_key_values("a=none,b=true,c=0.5,d=3,e=x") == {"a": None, "b": True, "c": 0.5, "d": 3, "e": "x"}
    with pytest.raises(BackendSpecError, match="expected key=value"):
        parse_backend("smyrf:n_hashes")


def test_intervention_string_options_equal_the_tuple_form():
    label_s, fn_s = build_intervention("topk:k=2,by=effective")
    label_t, fn_t = build_intervention(("topk", {"k": 2, "by": "effective"}))
    assert label_s == label_t == "topk(k=2,by=effective)"
    assert fn_s.kind == fn_t.kind
    assert build_intervention("uniform")[0] == "uniform"
    with pytest.raises(ValueError, match="expected key=value"):
        build_intervention("topk:k")
