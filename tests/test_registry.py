"""The one registry mechanism behind backends and explanation methods."""

import pytest

from attnexplain.backends import BACKENDS, AttentionBackend, get_backend, register_backend
from attnexplain.methods import METHODS, ExplanationMethod, get_method, register_method


@pytest.mark.parametrize("register,base,registry,kind", [
    (register_backend, AttentionBackend, BACKENDS, "attention backend"),
    (register_method, ExplanationMethod, METHODS, "explanation method"),
])
def test_registration_refuses_empty_and_clashing_names(register, base, registry, kind):
    before = dict(registry)
    nameless = type("Nameless", (base,), {"name": ""})
    with pytest.raises(ValueError, match="non-empty"):
        register(nameless)
    taken = sorted(registry)[0]
    impostor = type("Impostor", (base,), {"name": taken})
    with pytest.raises(ValueError, match=f"an {kind} named '{taken}' is already registered"):
        register(impostor)
    assert register(registry[taken]) is registry[taken]  # re-registering the same class is fine
    assert dict(registry) == before


def test_instances_pass_through_and_backend_options_with_instance_are_refused():
    dense = get_backend("dense")
    assert get_backend(dense) is dense
    with pytest.raises(TypeError, match="instance"):
        get_backend(dense, window=3)
    raw = get_method("raw_attention")
    assert get_method(raw) is raw
    with pytest.raises(KeyError, match="unknown explanation method 'nope'"):
        get_method("nope")
