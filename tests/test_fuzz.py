"""Every decoder of another institution's bytes, fuzzed (bounded budget for every CI run).

The targets and the property live in ``simulations/fuzz_long.py`` (its long run is in
docs/fuzzing.md).  Property, per input: the decoder returns or raises a
``fedcredit.errors`` type, within ``TIME_LIMIT_S``, with a peak traced allocation
bounded by the input's size.  Inputs: arbitrary bytes and mutations (flip, set,
truncate, extend, splice, delete) of real valid encodings.  A fixed seed keeps a CI
run reproducible; ``FEDCREDIT_FUZZ_EXAMPLES`` raises the per-decoder budget.
"""

from __future__ import annotations

import os

import pytest

from simulations.fuzz_long import BUILDERS, Finding, Target, check, run_target

EXAMPLES = int(os.environ.get("FEDCREDIT_FUZZ_EXAMPLES", "120"))
# the CKKS parsers cost ~10-100 ms per input; the rest well under 1 ms
SLOW = {"ckks", "ckks_hist", "artifacts", "scoring"}

_CACHE: dict[str, list[Target]] = {}


def _targets(group: str) -> list[Target]:
    if group not in _CACHE:
        _CACHE[group] = BUILDERS[group]()
    return _CACHE[group]


@pytest.mark.parametrize("group", sorted(BUILDERS))
def test_decoder_refuses_hostile_bytes_with_our_errors_in_bounded_time_and_memory(group: str) -> None:
    for t in _targets(group):
        run_target(t, max(5, EXAMPLES // 4) if group in SLOW else EXAMPLES)


def test_property_catches_a_foreign_exception_and_an_outsized_allocation() -> None:
    """The harness itself: a decoder that leaks a KeyError, or allocates 10^8 bytes for 3, is a finding."""
    import numpy as np

    def leaks(b: bytes) -> None:
        {}[b]

    def balloons(b: bytes) -> None:
        np.ones(10**8 // 8)

    with pytest.raises(Finding, match="KeyError"):
        check(Target("leaky", leaks, [b""]), b"abc")
    with pytest.raises(Finding, match="allocated"):
        check(Target("balloon", balloons, [b""]), b"abc")


def test_a_header_claiming_a_huge_array_is_refused_before_allocation() -> None:
    """The concrete attacks named in the issue: a codec header, an FCKK blob and a .npy header each claim
    ~2^40 elements in a tiny payload; each is refused with our error and no large allocation."""
    from simulations.fuzz_long import _artifacts, _ckks, _codec

    for group, name in ((_codec, "codec.unpack (FCW1)"), (_ckks, "ckks.decrypt_vector (FCKK blob)"),
                        (_artifacts, "artifacts.load_npz")):
        t = next(x for x in group() if x.name == name)
        for s in t.seeds:
            check(t, s)
        assert t.stats["refused"] >= 1, f"{name}: the lying seed was accepted"
