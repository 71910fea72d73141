"""crypto.ckks_select: the hidden-split selection kernel, alone (the protocol around it: tests/test_secureboost.py).

Exactness of the selected bits for dense and binned candidate tables and any candidate, the placed
(online) answer, the refusals, and the label party as attacker on a placed answer's slots.
"""

from __future__ import annotations

import numpy as np
import pytest
from tenseal import sealapi as sa

from crypto import ckks, ckks_select
from crypto.ckks_hist import SLOTS, HistogramKeeper
from fedcredit.errors import DataError, ProtocolError


@pytest.fixture(scope="module")
def keys():
    keeper = HistogramKeeper(64, extra_steps=ckks_select.galois_steps())
    sel = ckks_select.SelectionKeeper(keeper.ctx)
    yield keeper, ckks.load_public(keeper.public_bytes), sel
    sel.close()
    keeper.close()


@pytest.mark.parametrize("n_cand, n_rows", [(1, 5), (7, 100), (110, 9000), (300, 17000)])
def test_the_selected_bits_are_exactly_the_winners_for_any_candidate(keys, n_cand: int, n_rows: int) -> None:
    keeper, pub, sel = keys
    rng = np.random.default_rng(n_cand)
    T = rng.random((n_cand, n_rows)) < 0.5
    ev = ckks_select.SelectionEvaluator(pub, T, galois=keeper.galois_bytes, cache_mb=256)
    assert ev.block == ckks_select.block_size(n_cand) >= n_cand
    for c in sorted({0, n_cand // 2, n_cand - 1}):
        out = ev.bits(sel.selectors(c, n_cand, 0)[0])
        assert len(out) == ckks_select.n_pairs(n_rows)
        assert np.array_equal(sel.decrypt_bits(out, n_rows, "host"), T[c])


def test_binned_candidates_give_the_same_bits_as_the_dense_table(keys) -> None:
    keeper, pub, sel = keys
    rng = np.random.default_rng(1)
    Xb, cf, cl = rng.integers(0, 5, (9000, 3)), rng.integers(0, 3, 40), rng.random((40, 5)) < 0.5
    dense = cl[np.arange(40)[:, None], Xb[:, cf].T]
    ev = ckks_select.SelectionEvaluator(pub, (Xb, cf, cl), galois=keeper.galois_bytes, cache_mb=256)
    for c in (0, 17, 39):
        assert np.array_equal(sel.decrypt_bits(ev.bits(sel.selectors(c, 40, 0)[0]), 9000, "host"), dense[c])


def test_placed_selectors_answer_one_applicant_per_split(keys) -> None:
    _, pub, sel = keys
    rng = np.random.default_rng(2)
    P, n_splits = 100, 150  # block 128: 64 splits per answer ciphertext -> 3
    cand = rng.integers(0, P, n_splits)
    placed = {s: sel.selectors(int(cand[s]), P, s)[1] for s in range(n_splits)}
    ps = ckks_select.PlacedSelectors(pub, placed, P, what="test")
    assert ps.n_answers == 3
    for _ in range(3):
        t = rng.random(P) < 0.5
        got = sel.decrypt_placed(ps.answer(t), list(range(n_splits)), ps.block, "host")
        assert got == {s: bool(t[cand[s]]) for s in range(n_splits)}


def test_malformed_answers_and_oversized_tables_are_refused(keys) -> None:
    keeper, pub, sel = keys
    with pytest.raises(DataError, match="1 to 4096 split candidates"):
        ckks_select.block_size(SLOTS + 1)
    ev = ckks_select.SelectionEvaluator(pub, np.ones((3, 10), bool), galois=keeper.galois_bytes, cache_mb=8)
    rep, placed = sel.selectors(1, 3, 0)
    with pytest.raises(ProtocolError, match="selection ciphertexts for 10 rows"):
        sel.decrypt_bits(ev.bits(rep) * 2, 10, "host")
    with pytest.raises(ProtocolError, match="not at the expected CKKS level"):
        sel.decrypt_bits([rep], 10, "host")  # a fresh ciphertext is not an answer
    two = keeper.encrypt_rows(np.full(10, 2.0 + 0j))  # "bits" of 2: a passive party sending garbage
    ct = sa.Ciphertext()
    ev._evaluator.multiply_plain(ev._io.load(two[0], "x"), _ones(ev), ct)
    ev._evaluator.rescale_to_next_inplace(ct)
    with pytest.raises(ProtocolError, match="not 0/1 values"):
        sel.decrypt_bits([ev._io.dump(ct)], 10, "host")
    with pytest.raises(ProtocolError, match="unexpected CKKS level or scale"):
        ev.bits(ev.bits(rep)[0])  # an answer is not a selector


def _ones(ev: ckks_select.SelectionEvaluator):
    pt = sa.Plaintext()
    ev._encoder.encode(np.ones(SLOTS, dtype=np.complex128), ev._top, 2.0**40, pt)
    return pt


def _slot_attack(sel: ckks_select.SelectionKeeper, pub, rng, trials: int) -> float:
    """The label party, knowing its own selector's encryption error err_c, correlates each slot the product left
    it (v_c ≈ err_c · t_c(x) beside the winner's) with the applicant's other candidate bits t_c(x)."""
    P = 100
    _, placed = sel.selectors(7, P, 0)
    ct, pt = sel._io.load(placed, "own"), sa.Plaintext()
    sel._decryptor.decrypt(ct, pt)
    err = np.asarray(sel._encoder.decode_complex(pt))[:P].real
    err[7] -= 1.0
    ps = ckks_select.PlacedSelectors(pub, {0: placed}, P, what="test")
    others = np.arange(P) != 7
    xs, ts = [], []
    for _ in range(trials):
        t = rng.random(P) < 0.5
        v = sel._decrypt(ps.answer(t), "host")[0][:P].real
        xs.append((v * np.sign(err))[others])
        ts.append(t[others])
    return float(np.corrcoef(np.concatenate(xs), np.concatenate(ts))[0, 1])


def test_the_label_party_cannot_read_an_applicants_other_candidate_bits_from_a_placed_answer(keys, monkeypatch) -> None:
    """Without the zero-sum mask (control) the slots of a block beside the winner's carry err_c · t_c(x), and the
    key holder, who knows err_c, finds the applicant's other candidate bits in them (correlation 0.05-0.07 over
    59,400 slot readings, sigma 0.004); with it (the default) nothing is left (|corr| < 0.025).
    Only the block's sum — the split's bit — is meant to be read."""
    _, pub, sel = keys
    rng = np.random.default_rng(5)
    with monkeypatch.context() as m:
        m.setattr(ckks_select, "_MASK_STD", 0.0)
        m.setattr(ckks_select, "FLOOD_STD", 0.0)
        control = _slot_attack(sel, pub, rng, 600)
    masked = _slot_attack(sel, pub, rng, 600)
    assert control > 0.025, control
    assert abs(masked) < 0.025, masked


def test_a_pool_of_two_workers_gives_the_same_bits(keys) -> None:
    """[compute] workers = 2: the selection shards over row pairs (crypto/ckks_hist_pool.py); 17,000 rows are
    three pairs, so two shards, and the bits are the single-process kernel's."""
    from crypto.ckks_hist_pool import PooledSelectionEvaluator, shard_pairs
    from fedcredit import compute

    keeper, pub, sel = keys
    rng = np.random.default_rng(4)
    Xb, cf, cl = rng.integers(0, 6, (17000, 4)), rng.integers(0, 4, 50), rng.random((50, 6)) < 0.5
    dense = cl[np.arange(50)[:, None], Xb[:, cf].T]
    assert shard_pairs(17000, 2) == [(0, 8192), (8192, 17000)]
    pool = compute.WorkerPool(2, "processes")
    ev = PooledSelectionEvaluator(pub, Xb, cf, cl, pool=pool, cache_mb=64, galois=keeper.galois_bytes, party="host")
    try:
        picks = [0, 23, 49]
        outs = ev.bits_many([sel.selectors(c, 50, k)[0] for k, c in enumerate(picks)])
        for c, out in zip(picks, outs):
            assert len(out) == 3 and np.array_equal(sel.decrypt_bits(out, 17000, "host"), dense[c])
        assert ev.stats["selections"] == 3 and ev.stats["plain_mults"] > 0
    finally:
        ev.close()
