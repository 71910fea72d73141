"""Measure the CKKS error of vertical LR's returned gradient sums (what noise flooding must hide).

    python -m simulations.ckks_decrypt_error [--data ../shared/data] [--trials 20]

For each case: the label party encrypts a residual chunk (scaled by the protocol's
2^RESIDUAL_SCALE_BITS), the passive multiplies it by a feature column and adds its mask
(crypto.ckks.masked_column_products), and the key holder sums the decrypted slots
*without* flooding (crypto.ckks._slot_sums with noise 0: a measurement, never protocol
code).  The error is that sum minus the exact value, computed with math.fsum.  Prints,
per case, the squared column norm over the chunk, the error's standard deviation and
maximum, and the bound crypto.ckks.MASKED_SUM_ERROR_BOUND the flooding is sized on.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from crypto import ckks
from fedcredit.data import load_table
from fedcredit.protocols.vertical_common import Standardizer
from fedcredit.protocols.vertical_lr import RESIDUAL_SCALE_BITS

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def measure(sk: ckks.SecretContext, X: np.ndarray, L: int, mask_bound: float, trials: int,
            rng: np.random.Generator) -> np.ndarray:
    """Errors of ``trials * X.shape[1]`` unflooded slot sums for residual chunks of length ``L``."""
    pk = sk.public()
    scale = 2.0**RESIDUAL_SCALE_BITS
    # TenSEAL labels the rescaled product with scale 2^40 while its true scale is 2^80/q (q the
    # dropped 40-bit prime): a fixed, key-independent factor 2^40/q - 1 ~ 1.3e-7 on the product,
    # which the passive could even undo.  The error to hide is what remains.
    moduli = [m.value() for m in sk.tenseal_context.seal_context().data.first_context_data().parms().coeff_modulus()]
    label_factor = sk.tenseal_context.global_scale / moduli[-1]  # the data prime the rescale drops
    errs = []
    for _ in range(trials):
        rows = rng.integers(0, len(X), L)
        Xb = X[rows]
        r = rng.uniform(-1.0, 1.0, L) * scale
        m = rng.uniform(-mask_bound, mask_bound, (X.shape[1], L)) * scale if mask_bound else np.zeros((X.shape[1], L))
        out = ckks.masked_column_products(pk, ckks.encrypt_chunks(sk, r, L), Xb, m, what="measurement")
        got = ckks._slot_sums(sk, out, 0.0, "measurement")
        for c in range(X.shape[1]):
            errs.append(got[c] - math.fsum(np.concatenate([r * Xb[:, c] * label_factor, m[c]]).tolist()))
    return np.asarray(errs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    sk = ckks.new_context()  # the vertical LR defaults: N=8192, (60, 40, 40, 60), scale 2^40
    host = load_table(args.data / "default_credit_hetero_host.csv", party="host")
    Xh = Standardizer.fit(host.X).transform(host.X)
    worst = np.sqrt(2.0**15 / 4096) * rng.choice([-1.0, 1.0], size=(4096, 10))  # ||x||^2 = 2^15 over 4096 rows
    print(f"residual scale 2^{RESIDUAL_SCALE_BITS}; bound MASKED_SUM_ERROR_BOUND = 2^{math.log2(ckks.MASKED_SUM_ERROR_BOUND):.0f} "
          f"= {ckks.MASKED_SUM_ERROR_BOUND:.3g}; flooding std at sigma=40: {ckks.Flooding(ckks.MASKED_SUM_ERROR_BOUND).std:g}")
    print(f"{'case':44s} {'n':>5s} {'|x|^2/chunk':>11s} {'err std':>9s} {'max |err|':>9s}")
    cases = [
        ("host columns, L=3600 (benchmark), masks 2^30", Xh, 3600, 2.0**30),
        ("host columns, L=3600, no mask", Xh, 3600, 0.0),
        ("host columns, L=4096, masks 2^30", Xh, 4096, 2.0**30),
        ("|x|^2 = 2^15 per chunk, L=4096, masks 2^30", worst, 4096, 2.0**30),
        ("|x|^2 = 2^15 per chunk, L=4096, no mask", worst, 4096, 0.0),
    ]
    for name, X, L, mb in cases:
        e = measure(sk, X, L, mb, args.trials, rng)
        norm = float(np.mean(np.sum(X[:L] ** 2, axis=0))) if X is worst else float(L)
        print(f"{name:44s} {len(e):5d} {norm:11.0f} {np.std(e):9.2e} {np.max(np.abs(e)):9.2e}", flush=True)


if __name__ == "__main__":
    main()
