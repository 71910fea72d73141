"""Decrypt-and-return (issue 8 item 6): a decrypted value that goes back to the party that built
the ciphertext is flooded with noise that hides the key-dependent CKKS error, and protocol code
has no way to the unflooded decryption."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from crypto import ckks
from fedcredit.errors import ConfigError
from fedcredit.protocols.vertical_lr import FLOOD_SIGMA_BITS, RESIDUAL_SCALE_BITS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernel() -> tuple[ckks.SecretContext, list[bytes], float]:
    """One gradient ciphertext as vertical LR's passive builds it, and its exact slot sum."""
    rng = np.random.default_rng(8)
    sk = ckks.new_context()  # vertical LR's parameters
    L = 4096
    r = rng.uniform(-1, 1, L) * 2.0**RESIDUAL_SCALE_BITS
    x = rng.normal(size=(L, 1))
    m = rng.uniform(-(2.0**42), 2.0**42, (1, L))
    out = ckks.masked_column_products(sk.public(), ckks.encrypt_chunks(sk, r, L), x, m, what="residual")
    q = sk.tenseal_context.seal_context().data.first_context_data().parms().coeff_modulus()[-1].value()
    exact = math.fsum((r * x[:, 0] * (2.0**40 / q)).tolist() + m[0].tolist())  # TenSEAL's fixed rescale label
    return sk, out, exact


def test_returned_sums_carry_noise_of_the_configured_size(kernel) -> None:  # type: ignore[no-untyped-def]
    sk, out, exact = kernel
    flood = ckks.masked_sum_flooding(sk, FLOOD_SIGMA_BITS)
    assert flood.std == pytest.approx(2.0**20 * ckks.MASKED_SUM_ERROR_BOUND)
    n = 400
    got = ckks.decrypt_sums(sk, out * n, flood=flood, what="gradient")  # the same ciphertext, returned n times
    diff = got[0::2] - got[1::2]
    # returns of the same ciphertext differ (equal only when two draws land in one float64 ulp, ~3e-5 per pair)
    assert np.count_nonzero(diff == 0) <= 2
    assert np.std(diff) / math.sqrt(2) == pytest.approx(flood.std, rel=0.2)
    assert np.std(got) == pytest.approx(flood.std, rel=0.15)
    assert abs(np.mean(got) - exact) < 5 * flood.std / math.sqrt(n)  # unbiased: the gradient survives
    # and the noise is what hides the error: far above the bound, which the unflooded error respects
    err = ckks._slot_sums(sk, out * 4, 0.0, "gradient") - exact
    assert np.all(np.abs(err) < 0.3)  # decode rounding of the 2^42 mask (key-independent)
    assert flood.std > 2.0**19 * ckks.MASKED_SUM_ERROR_BOUND


def test_error_bound_holds_for_protocol_shaped_ciphertexts() -> None:
    """The key-dependent error (no mask: nothing but the ciphertext's own error) stays below the bound."""
    rng = np.random.default_rng(9)
    sk = ckks.new_context()
    q = sk.tenseal_context.seal_context().data.first_context_data().parms().coeff_modulus()[-1].value()
    L = 4096
    errs = []
    for _ in range(3):
        r = rng.uniform(-1, 1, L) * 2.0**RESIDUAL_SCALE_BITS
        X = rng.normal(size=(L, 4)) * 2.8  # |x|^2 summed over the chunk ~ 2^15
        out = ckks.masked_column_products(sk.public(), ckks.encrypt_chunks(sk, r, L), X, np.zeros((4, L)), what="r")
        got = ckks._slot_sums(sk, out, 0.0, "g")
        errs += [got[c] - math.fsum((r * X[:, c] * (2.0**40 / q)).tolist()) for c in range(4)]
    assert max(abs(e) for e in errs) < ckks.MASKED_SUM_ERROR_BOUND / 2


def test_flooding_is_not_optional_and_needs_a_measured_bound(kernel) -> None:  # type: ignore[no-untyped-def]
    sk, out, _ = kernel
    with pytest.raises(TypeError):
        ckks.decrypt_sums(sk, out, what="gradient")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="Flooding"):
        ckks.decrypt_sums(sk, out, flood=None, what="gradient")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no measured CKKS decryption-error bound"):
        ckks.masked_sum_flooding(ckks.new_context(8192, (60, 40, 40, 60), 30))


def _python_files(*dirs: str) -> list[Path]:
    return [p for d in dirs for p in (ROOT / d).rglob("*.py")]


def test_protocol_code_cannot_reach_the_unflooded_decryption() -> None:
    """Outside crypto/, no deployed module imports TenSEAL, touches a TenSEAL context or a private crypto name."""
    offences = []
    for path in _python_files("fedcredit", "party", "coordinator"):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offences += [f"{rel}: import {a.name}" for a in node.names if a.name.split(".")[0] in {"tenseal", "seal"}]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if mod.split(".")[0] in {"tenseal", "seal"}:
                    offences.append(f"{rel}: from {mod} import ...")
                if mod.startswith("crypto"):
                    offences += [f"{rel}: from {mod} import {a.name}" for a in node.names if a.name.startswith("_")]
            elif isinstance(node, ast.Attribute):
                if node.attr == "tenseal_context":
                    offences.append(f"{rel}:{node.lineno}: .tenseal_context")
                if (isinstance(node.value, ast.Name) and node.value.id in {"ckks", "ckks_hist"}
                        and node.attr.startswith("_")):
                    offences.append(f"{rel}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offences, offences
    # and the one decrypt-and-return call site in vertical LR passes the flooding
    src = (ROOT / "fedcredit/protocols/vertical_lr.py").read_text()
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "decrypt_sums"]
    assert calls and all(any(k.arg == "flood" for k in c.keywords) for c in calls)
