"""Model families for horizontal federation, behind one flat-parameter-vector interface.

Federated averaging only needs to add and scale parameter vectors, so every model
exposes its parameters as one float64 vector (``get_flat``/``set_flat``); that
vector is what gets pre-weighted, encrypted and summed.  Initialisation is a pure
function of (family, dimensions, seed), so every party starts from the same global
model without any message.

Families:
* ``"lr"``  — logistic regression in numpy (mini-batch SGD, L2), the scorecard workhorse;
* ``"mlp"`` — a small torch MLP ``d -> hidden -> 1`` (ReLU), trained with SGD.

``fit_local`` supports FedProx: with ``prox_mu > 0`` the local objective adds
``mu/2 * ||theta - theta_global||^2`` so non-IID parties do not drift far from the
global model during their local epochs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from crypto.files import write_text
from fedcredit.errors import DataError
from fedcredit.metrics import sigmoid

FAMILIES = ("lr", "mlp")


class Model(Protocol):
    family: str

    @property
    def n_params(self) -> int: ...

    def get_flat(self) -> np.ndarray: ...

    def set_flat(self, v: np.ndarray) -> None: ...

    def fit_local(
        self,
        X: np.ndarray,
        y: np.ndarray,
        epochs: int,
        lr: float,
        batch_size: int,
        prox_mu: float = 0.0,
        global_flat: np.ndarray | None = None,
        seed: int = 0,
    ) -> None: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    def config(self) -> dict[str, Any]: ...


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    bs = max(1, min(int(batch_size), n)) if batch_size > 0 else n
    for s in range(0, n, bs):
        yield order[s : s + bs]


class LogisticModel:
    """Binary logistic regression; parameters = [w_1..w_d, b]."""

    family = "lr"

    def __init__(self, d: int, seed: int = 0, l2: float = 1e-4) -> None:
        self.d = int(d)
        self.l2 = float(l2)
        self.seed = int(seed)
        # Zero init is optimal for a convex model and trivially identical at every party.
        self.w = np.zeros(self.d, dtype=np.float64)
        self.b = 0.0

    @property
    def n_params(self) -> int:
        return self.d + 1

    def get_flat(self) -> np.ndarray:
        return np.concatenate([self.w, [self.b]]).astype(np.float64)

    def set_flat(self, v: np.ndarray) -> None:
        v = np.asarray(v, dtype=np.float64).ravel()
        if v.shape[0] != self.n_params:
            raise ValueError(f"lr model over {self.d} features has {self.n_params} parameters, got {v.shape[0]}")
        self.w = v[:-1].copy()
        self.b = float(v[-1])

    def fit_local(
        self,
        X: np.ndarray,
        y: np.ndarray,
        epochs: int,
        lr: float,
        batch_size: int,
        prox_mu: float = 0.0,
        global_flat: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).ravel()
        rng = np.random.default_rng(seed)
        g = np.asarray(global_flat, dtype=np.float64) if global_flat is not None else self.get_flat()
        gw, gb = g[:-1], float(g[-1])
        for _ in range(int(epochs)):
            for idx in _batches(X.shape[0], batch_size, rng):
                xb, yb = X[idx], y[idx]
                r = sigmoid(xb @ self.w + self.b) - yb
                grad_w = xb.T @ r / len(idx) + self.l2 * self.w
                grad_b = float(r.mean())
                if prox_mu > 0:
                    grad_w = grad_w + prox_mu * (self.w - gw)
                    grad_b = grad_b + prox_mu * (self.b - gb)
                self.w -= lr * grad_w
                self.b -= lr * grad_b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(X, dtype=np.float64) @ self.w + self.b)

    def config(self) -> dict[str, Any]:
        return {"family": self.family, "d": self.d, "l2": self.l2}


def _torch_single_thread() -> None:
    """Pin torch to one intra-op thread for the whole process.

    Small models train fastest single-threaded, the machine is shared, and -- the
    real reason -- a thread count that changes while several parties train in one
    process (in-process simulation) changes float summation order, and an MLP
    amplifies that into different models.  One fixed setting keeps runs reproducible.
    """
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class MLPModel:
    """``d -> hidden -> 1`` ReLU network in torch (float32 inside, float64 flat vector outside)."""

    family = "mlp"

    def __init__(self, d: int, seed: int = 0, hidden: int = 16, l2: float = 1e-4) -> None:
        import torch

        _torch_single_thread()
        self.d, self.hidden, self.l2, self.seed = int(d), int(hidden), float(l2), int(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(self.d, self.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(self.hidden, 1),
        ).to(torch.float32)
        # Deterministic init from a private numpy RNG (torch's default init draws from its
        # global RNG, which races when several parties build models in one process).
        # Same distribution as torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        rng = np.random.default_rng(self.seed)
        parts = []
        layers: tuple[torch.nn.Linear, torch.nn.Linear] = (self.net[0], self.net[2])  # type: ignore[assignment]
        for layer in layers:  # parameter order: w1, b1, w2, b2
            bound = 1.0 / np.sqrt(layer.in_features)
            parts.append(rng.uniform(-bound, bound, size=layer.weight.numel()))
            parts.append(rng.uniform(-bound, bound, size=layer.bias.numel()))
        self.set_flat(np.concatenate(parts))

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def get_flat(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            return torch.nn.utils.parameters_to_vector(self.net.parameters()).double().numpy().copy()

    def set_flat(self, v: np.ndarray) -> None:
        import torch

        v = np.asarray(v, dtype=np.float64).ravel()
        if v.shape[0] != self.n_params:
            raise ValueError(
                f"mlp model ({self.d}->{self.hidden}->1) has {self.n_params} parameters, got {v.shape[0]}"
            )
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(torch.from_numpy(v.astype(np.float32)), self.net.parameters())

    def fit_local(
        self,
        X: np.ndarray,
        y: np.ndarray,
        epochs: int,
        lr: float,
        batch_size: int,
        prox_mu: float = 0.0,
        global_flat: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        import torch

        Xt = torch.from_numpy(np.asarray(X, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32).ravel())
        rng = np.random.default_rng(seed)
        g = self.get_flat() if global_flat is None else np.asarray(global_flat, dtype=np.float64)
        g_params = []
        if prox_mu > 0:
            start = 0
            for p in self.net.parameters():
                k = p.numel()
                g_params.append(torch.from_numpy(g[start : start + k].astype(np.float32)).view_as(p))
                start += k
        opt = torch.optim.SGD(self.net.parameters(), lr=lr, weight_decay=self.l2)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        self.net.train()
        for _ in range(int(epochs)):
            for idx in _batches(Xt.shape[0], batch_size, rng):
                ix = torch.from_numpy(idx)
                opt.zero_grad()
                loss = loss_fn(self.net(Xt[ix]).squeeze(-1), yt[ix])
                if prox_mu > 0:
                    prox = sum(((p - gp) ** 2).sum() for p, gp in zip(self.net.parameters(), g_params))
                    loss = loss + 0.5 * prox_mu * prox
                loss.backward()
                opt.step()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        import torch

        self.net.eval()
        with torch.no_grad():
            z = self.net(torch.from_numpy(np.asarray(X, dtype=np.float32))).squeeze(-1)
            return torch.sigmoid(z).double().numpy()

    def config(self) -> dict[str, Any]:
        return {"family": self.family, "d": self.d, "hidden": self.hidden, "l2": self.l2}


def make_model(family: str, d: int, seed: int = 0, *, hidden: int = 16, l2: float = 1e-4) -> Model:
    """Build a model of ``family`` over ``d`` features with a seed-deterministic init."""
    if family == "lr":
        return LogisticModel(d, seed=seed, l2=l2)
    if family == "mlp":
        return MLPModel(d, seed=seed, hidden=hidden, l2=l2)
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


@dataclass
class SavedModel:
    """A global model as a party stores it: parameters plus the federated standardization."""

    model: Model
    mean: np.ndarray
    std: np.ndarray
    feature_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, X_raw: np.ndarray) -> np.ndarray:
        """Score raw (unstandardized) feature rows in ``feature_names`` order."""
        return self.model.predict_proba((np.asarray(X_raw, dtype=np.float64) - self.mean) / self.std)


def save_model(
    path: str | Path,
    model: Model,
    *,
    mean: np.ndarray,
    std: np.ndarray,
    feature_names: Sequence[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the model as human-readable JSON, atomically (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": "fedcredit-model/1",
        "config": model.config(),
        "feature_names": list(feature_names),
        "standardization": {"mean": [float(v) for v in mean], "std": [float(v) for v in std]},
        "params": [float(v) for v in model.get_flat()],
        "meta": meta or {},
    }
    return write_text(path, json.dumps(doc, indent=1))


def load_model(path: str | Path) -> SavedModel:
    """Read a model written by :func:`save_model`."""
    return load_model_bytes(Path(path).read_bytes(), source=str(path))


def _expected_params(family: Any, d: Any, hidden: Any) -> int:
    """Parameter count a model file's config implies (before any model is built)."""
    if family == "lr":
        return int(d) + 1
    if family == "mlp":
        return int(d) * int(hidden) + int(hidden) + int(hidden) + 1
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def load_model_bytes(raw: bytes, source: str = "model.json") -> SavedModel:
    """A model from :func:`save_model`'s bytes (e.g. an artifact's ``model.json``).

    The file may come from another institution (an artifact): every field is checked against
    the others *before* a model is built, so ``"d": 10**9`` in a 200-byte file cannot make us
    allocate a billion weights; anything malformed is a DataError naming ``source``.
    """
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != "fedcredit-model/1":
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise DataError(f"{source}: not a fedcredit model file (format {got!r})")
        cfg = dict(doc["config"])
        family = cfg.pop("family")
        d = cfg.pop("d")
        params = doc["params"]
        st = doc["standardization"]
        names = doc["feature_names"]
        if not isinstance(params, list) or not isinstance(names, list) or not isinstance(st, dict):
            raise DataError(f"{source}: 'params' and 'feature_names' must be lists, 'standardization' an object")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in params):
            raise DataError(f"{source}: 'params' must be numbers")
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= len(params):
            raise DataError(f"{source}: 'config.d' = {d!r} is not a feature count that fits {len(params)} parameters")
        hidden = cfg.get("hidden", 16)
        if family == "mlp" and (isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= len(params)):
            raise DataError(f"{source}: 'config.hidden' = {hidden!r} does not fit {len(params)} parameters")
        if _expected_params(family, d, hidden) != len(params):
            raise DataError(f"{source}: a {family} model over {d} features needs "
                            f"{_expected_params(family, d, hidden)} parameters, the file has {len(params)}")
        if len(names) != d:
            raise DataError(f"{source}: {len(names)} feature names for a model over {d} features")
        mean = np.asarray(st["mean"], dtype=np.float64)
        std = np.asarray(st["std"], dtype=np.float64)
        if mean.shape != (d,) or std.shape != (d,):
            raise DataError(f"{source}: standardization mean/std must have {d} values each")
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(f"{source}: 'meta' must be an object")
        model = make_model(family, d, **cfg)
        model.set_flat(np.asarray(params, dtype=np.float64))
        return SavedModel(model=model, mean=mean, std=std, feature_names=[str(n) for n in names], meta=dict(meta))
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{source}: nests too deeply to be a model file") from None
    except (ValueError, KeyError, TypeError, OverflowError, UnicodeDecodeError, RuntimeError) as exc:
        raise DataError(f"{source}: not a fedcredit model file: {exc!r}") from None
