"""Export a model for use outside fedcredit: a horizontal LR whole, a vertical scorecard party by party.

A horizontal LR is the one model every party holds whole, and it is a linear model
on standardized features, so it can leave fedcredit in formats a bank's existing
decision engine reads without any fedcredit code:

* ``scorecard.csv`` — a points-based scorecard (see :func:`export_scorecard_csv`);
* ``model.linear.json`` — a plain JSON linear model with the formula written in it;
* ``model.pmml`` — PMML 4.4 ``RegressionModel`` (``normalizationMethod="logit"``).

Folding standardization into raw-scale coefficients (``z_j = (x_j - mean_j) / std_j``)::

    logit = b + sum_j w_j z_j = (b - sum_j w_j mean_j / std_j) + sum_j (w_j / std_j) x_j
    pd    = 1 / (1 + exp(-logit))
    score = offset + factor * ln((1 - pd) / pd) = offset - factor * logit

A vertical LR part is not a model alone (its score needs the other parties), except as
a **binned scorecard** (``fedcredit.scorecard``, docs/scorecard.md): a party's part with
a scorecard exports its own share, at that party, as

* ``scorecard.csv`` — one row per bin of each own feature (``feature, bin, label,
  points``), the base points (label party) and one opaque ``passive`` line per passive
  party (its subtotal is computed there, per application; its bins are not in this file);
* ``scorecard.onnx`` — the same part as an ONNX graph (:func:`scorecard_onnx_bytes`): bin
  assignment, points lookup and sum, with the passive parties' subtotals as an input, so a
  decision engine can run it with onnxruntime (tests check it scores as fedcredit does).

ONNX is not offered for a horizontal LR: its JSON/PMML files already carry the whole
linear model; other vertical parts (SecureBoost, LR without bins) are not exportable.
"""

from __future__ import annotations

import csv
import io
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crypto.files import PUBLIC_MODE, write_file
from fedcredit.artifacts import Artifact, json_bytes, load_horizontal
from fedcredit.decision import Contributions, ScoreScale, lr_contributions
from fedcredit.errors import ConfigError, DataError
from fedcredit.metrics import sigmoid
from fedcredit.scorecard import ScorecardPart

LINEAR_FORMAT = "fedcredit-linear-model/1"
SCORECARD_COLUMNS = ("row_type", "feature", "lower", "upper", "reference", "points_per_unit", "points")


@dataclass(frozen=True)
class LinearModel:
    """A logistic regression on standardized features, with what is needed to score raw rows."""

    feature_names: list[str]
    weights: np.ndarray  # on standardized features
    bias: float
    mean: np.ndarray
    std: np.ndarray
    source: dict[str, Any]

    @classmethod
    def from_artifact(cls, artifact: Artifact) -> LinearModel:
        m = artifact.manifest
        if m.kind != "horizontal-lr":
            why = (
                "a vertical part is only one party's share of the model"
                if m.is_vertical
                else "a neural network has no linear scorecard form"
            )
            raise ConfigError(
                f"cannot export {m.run_id}/{m.party}: kind {m.kind!r} is not exportable ({why}); "
                "only 'horizontal-lr' models can be exported"
            )
        saved = load_horizontal(artifact)
        params = saved.model.get_flat()
        return cls(
            feature_names=list(saved.feature_names),
            weights=np.asarray(params[:-1], dtype=np.float64),
            bias=float(params[-1]),
            mean=np.asarray(saved.mean, dtype=np.float64),
            std=np.asarray(saved.std, dtype=np.float64),
            source={"run_id": m.run_id, "party": m.party, "kind": m.kind, "model_hash": m.model_hash},
        )

    @property
    def raw_coefficients(self) -> np.ndarray:
        return self.weights / self.std

    @property
    def raw_intercept(self) -> float:
        return float(self.bias - np.sum(self.weights * self.mean / self.std))

    def _raw(self, x: Mapping[str, float] | Sequence[float]) -> np.ndarray:
        if isinstance(x, Mapping):
            missing = [n for n in self.feature_names if n not in x]
            if missing:
                raise DataError(f"application lacks feature(s) {missing} required by model {self.source.get('run_id')}")
            return np.asarray([float(x[n]) for n in self.feature_names], dtype=np.float64)
        return np.asarray(x, dtype=np.float64).ravel()

    def logit(self, x: Mapping[str, float] | Sequence[float]) -> float:
        z = (self._raw(x) - self.mean) / self.std
        return float(self.bias + z @ self.weights)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - self.mean) / self.std
        return sigmoid(Z @ self.weights + self.bias)

    def contributions(self, x: Mapping[str, float] | Sequence[float]) -> Contributions:
        """Per-feature logit contributions relative to the population-mean applicant."""
        z = (self._raw(x) - self.mean) / self.std
        return lr_contributions(self.weights, z, self.feature_names, intercept=self.bias)


def _fmt(v: float) -> str:
    return "" if v is None else repr(float(v))


def scorecard_rows(
    model: LinearModel, scale: ScoreScale, bins: Mapping[str, Sequence[float]] | None = None
) -> list[dict[str, str]]:
    """Rows of the scorecard table (see :func:`export_scorecard_csv`)."""
    bins = dict(bins or {})
    unknown = sorted(set(bins) - set(model.feature_names))
    if unknown:
        raise ConfigError(f"scorecard bins given for unknown feature(s) {unknown}")
    rows = [dict(row_type="base", feature="", lower="", upper="", reference="", points_per_unit="",
                 points=_fmt(scale.offset - scale.factor * model.bias))]
    ppu = -scale.factor * model.raw_coefficients
    for j, name in enumerate(model.feature_names):
        ref = float(model.mean[j])
        rows.append(dict(row_type="linear", feature=name, lower="-inf", upper="inf", reference=_fmt(ref),
                         points_per_unit=_fmt(ppu[j]), points=""))
        if name in bins:
            edges = [float(e) for e in bins[name]]
            if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or not all(map(math.isfinite, edges)):
                raise ConfigError(f"scorecard bins for {name!r} must be finite, strictly increasing edges, got {edges}")
            bounds = [-math.inf, *edges, math.inf]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                rep = hi if lo == -math.inf else lo if hi == math.inf else (lo + hi) / 2.0
                rows.append(dict(row_type="bin", feature=name, lower=_fmt(lo), upper=_fmt(hi), reference=_fmt(rep),
                                 points_per_unit="", points=_fmt(ppu[j] * (rep - ref))))
    return rows


def export_scorecard_csv(
    model: LinearModel, path: str | Path, scale: ScoreScale, bins: Mapping[str, Sequence[float]] | None = None
) -> Path:
    """Write a points scorecard CSV (columns ``row_type,feature,lower,upper,reference,points_per_unit,points``).

    * one ``base`` row: ``points`` = score of the population-mean applicant;
    * one ``linear`` row per feature: **exact** scoring is
      ``score = base.points + sum_features points_per_unit * (x - reference)``;
    * optional ``bin`` rows (when ``bins`` gives edges for a feature): the bin
      ``[lower, upper)`` scores ``points`` — the linear points at the bin's
      ``reference`` value (midpoint; the finite edge for open-ended bins), the
      usual binned-scorecard approximation.  Use either a feature's bins or its
      linear row, not both.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SCORECARD_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(scorecard_rows(model, scale, bins))
    return write_file(Path(path), buf.getvalue().encode("utf-8"), PUBLIC_MODE, exclusive=True, what="export")


def linear_model_doc(model: LinearModel, scale: ScoreScale | None = None) -> dict[str, Any]:
    """The plain JSON linear model (self-describing: the formula is in the file)."""
    doc: dict[str, Any] = {
        "format": LINEAR_FORMAT,
        "model_type": "logistic_regression",
        "target": "probability of default (label 1)",
        "formula": "logit = intercept + sum_j coefficients[j] * x[j]  (x = raw feature values, in 'features' order); "
        "pd = 1 / (1 + exp(-logit))",
        "features": list(model.feature_names),
        "coefficients": [float(v) for v in model.raw_coefficients],
        "intercept": model.raw_intercept,
        "standardized": {
            "formula": "z[j] = (x[j] - mean[j]) / std[j]; logit = intercept + sum_j coefficients[j] * z[j]",
            "mean": [float(v) for v in model.mean],
            "std": [float(v) for v in model.std],
            "coefficients": [float(v) for v in model.weights],
            "intercept": float(model.bias),
        },
        "source": dict(model.source),
    }
    if scale is not None:
        doc["score_scale"] = {
            "formula": "score = offset - factor * logit  (= offset + factor * ln((1 - pd) / pd))",
            "base_points": scale.base_points,
            "base_odds": scale.base_odds,
            "pdo": scale.pdo,
            "factor": scale.factor,
            "offset": scale.offset,
        }
    return doc


def export_linear_json(model: LinearModel, path: str | Path, scale: ScoreScale | None = None) -> Path:
    return write_file(Path(path), json_bytes(linear_model_doc(model, scale)), PUBLIC_MODE, exclusive=True, what="export")


def pmml_bytes(model: LinearModel) -> bytes:
    """PMML 4.4 RegressionModel; P(default) is the probability of target category "1"."""
    ns = "http://www.dmg.org/PMML-4_4"
    root = ET.Element("PMML", {"xmlns": ns, "version": "4.4"})
    header = ET.SubElement(root, "Header", {
        "description": f"fedcredit horizontal logistic regression, run {model.source.get('run_id')}, "
        f"model_hash {model.source.get('model_hash')}"
    })
    ET.SubElement(header, "Application", {"name": "fedcredit"})
    dd = ET.SubElement(root, "DataDictionary", {"numberOfFields": str(len(model.feature_names) + 1)})
    for n in model.feature_names:
        ET.SubElement(dd, "DataField", {"name": n, "optype": "continuous", "dataType": "double"})
    target = ET.SubElement(dd, "DataField", {"name": "default", "optype": "categorical", "dataType": "integer"})
    for v in ("0", "1"):
        ET.SubElement(target, "Value", {"value": v})
    rm = ET.SubElement(root, "RegressionModel", {
        "functionName": "classification", "normalizationMethod": "logit",
        "modelName": f"fedcredit-{model.source.get('run_id')}",
    })
    ms = ET.SubElement(rm, "MiningSchema")
    for n in model.feature_names:
        ET.SubElement(ms, "MiningField", {"name": n})
    ET.SubElement(ms, "MiningField", {"name": "default", "usageType": "target"})
    out = ET.SubElement(rm, "Output")
    ET.SubElement(out, "OutputField", {"name": "probability_default", "optype": "continuous", "dataType": "double",
                                       "feature": "probability", "value": "1"})
    t1 = ET.SubElement(rm, "RegressionTable", {"intercept": repr(model.raw_intercept), "targetCategory": "1"})
    for n, c in zip(model.feature_names, model.raw_coefficients):
        ET.SubElement(t1, "NumericPredictor", {"name": n, "exponent": "1", "coefficient": repr(float(c))})
    ET.SubElement(rm, "RegressionTable", {"intercept": "0", "targetCategory": "0"})
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def export_pmml(model: LinearModel, path: str | Path) -> Path:
    return write_file(Path(path), pmml_bytes(model), PUBLIC_MODE, exclusive=True, what="export")


# --------------------------------------------------------------------------- vertical scorecard parts

#: columns of a binned scorecard part's CSV
CARD_COLUMNS = ("row_type", "feature", "bin", "label", "points")
#: ONNX opsets the scorecard graph uses (default domain; ai.onnx.ml for LabelEncoder)
ONNX_OPSET, ONNX_ML_OPSET = 17, 3
PASSIVE_INPUT = "passive_points"


def scorecard_of(artifact: Artifact) -> tuple[ScorecardPart, list[str]]:
    """A vertical LR part's scorecard and (label party) the passive parties; ConfigError if it has none."""
    m = artifact.manifest
    if m.kind not in ("vertical-lr-label", "vertical-lr-passive"):
        raise ConfigError(f"cannot export {m.run_id}/{m.party}: kind {m.kind!r} has no scorecard")
    from fedcredit.kinds import load_part

    online = load_part(m.kind, artifact.files.get("model.json", b""), f"{m.run_id}/{m.party}")
    card = online.card
    if card is None:
        raise ConfigError(f"cannot export {m.run_id}/{m.party}: this vertical LR part has no scorecard "
                          "(train with binning and [model.scorecard]); a vertical part alone is not a model")
    return card, list(getattr(online, "passive_parties", []))


def scorecard_csv_bytes(card: ScorecardPart, passive_parties: Sequence[str] = ()) -> bytes:
    """The part's table (:data:`CARD_COLUMNS`): base row, one row per own bin, one opaque line per passive party.

    score = base points + the points of each own feature's bin + every passive party's subtotal.
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CARD_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in card.rows():
        w.writerow({**r, "points": _fmt(r["points"])})
    for p in passive_parties:
        w.writerow({"row_type": "passive", "feature": p, "bin": "", "label": f"subtotal computed at party '{p}'",
                    "points": ""})
    return buf.getvalue().encode("utf-8")


def scorecard_onnx_bytes(card: ScorecardPart, passive_parties: Sequence[str] = ()) -> bytes:
    """The part as an ONNX model (checked with ``onnx.checker``).

    Inputs, each ``[N, 1]``: one per own feature, named as the feature — ``double`` for a
    numeric one (NaN = missing), ``string`` (the category text; ``""`` = missing, an
    unknown category = missing, as in fedcredit) for a categorical one — and, when there
    are passive parties, ``passive_points`` ``double [N, P]`` (their subtotals, in the
    order of the CSV's passive lines).  Outputs: ``score [N, 1]``, ``points [N, k]`` (per
    own feature, in input order) and, at the label party, ``pd [N, 1]``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    inputs: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    axis1 = const("axis1", np.array([1], dtype=np.int64))
    per_feature: list[str] = []
    for j, f in enumerate(card.features):
        b, t = f.bins, f"f{j}"
        missing_to = b.missing_bin if b.missing_into is None else b.missing_into
        table = const(f"{t}_points", np.asarray(f.points, dtype=np.float64))
        if b.kind == "numeric":
            inputs.append(helper.make_tensor_value_info(f.feature, TensorProto.DOUBLE, ["N", 1]))
            edges = const(f"{t}_edges", np.asarray([list(b.edges) or [np.inf]], dtype=np.float64))
            # value bin = number of edges <= x (left-closed bins); no edges: one value bin (inf is never <= x)
            nodes += [helper.make_node("GreaterOrEqual", [f.feature, edges], [f"{t}_ge"]),
                      helper.make_node("Cast", [f"{t}_ge"], [f"{t}_ge64"], to=TensorProto.INT64),
                      helper.make_node("ReduceSum", [f"{t}_ge64", axis1], [f"{t}_vbin"], keepdims=1),
                      helper.make_node("IsNaN", [f.feature], [f"{t}_nan"]),
                      helper.make_node("Where", [f"{t}_nan", const(f"{t}_mbin", np.array(missing_to, dtype=np.int64)),
                                                 f"{t}_vbin"], [f"{t}_bin"])]
        else:
            inputs.append(helper.make_tensor_value_info(f.feature, TensorProto.STRING, ["N", 1]))
            group = {c: g for g, cats in enumerate(b.groups) for c in cats}
            keys = list(b.categories)
            nodes.append(helper.make_node("LabelEncoder", [f.feature], [f"{t}_bin"], domain="ai.onnx.ml",
                                          keys_strings=keys,
                                          values_int64s=[group.get(c, b.missing_bin) for c in keys],
                                          default_int64=missing_to))
        nodes.append(helper.make_node("Gather", [table, f"{t}_bin"], [f"{t}_pts"], axis=0))
        per_feature.append(f"{t}_pts")
    n = len(card.features)
    if n:
        nodes += [helper.make_node("Concat", per_feature, ["points"], axis=1),
                  helper.make_node("ReduceSum", ["points", axis1], ["own_sum"], keepdims=1)]
    else:
        raise ConfigError(f"party '{card.party}': a scorecard with no features has nothing to export as ONNX")
    total = "own_sum"
    if passive_parties:
        inputs.append(helper.make_tensor_value_info(PASSIVE_INPUT, TensorProto.DOUBLE, ["N", len(passive_parties)]))
        nodes += [helper.make_node("ReduceSum", [PASSIVE_INPUT, axis1], ["passive_sum"], keepdims=1),
                  helper.make_node("Add", [total, "passive_sum"], ["with_passive"])]
        total = "with_passive"
    nodes.append(helper.make_node("Add", [total, const("base", np.array(card.base_points, dtype=np.float64))],
                                  ["score"]))
    outputs = [helper.make_tensor_value_info("score", TensorProto.DOUBLE, ["N", 1]),
               helper.make_tensor_value_info("points", TensorProto.DOUBLE, ["N", n])]
    if card.role == "label":  # pd = sigmoid(logit), logit = (offset - score) / factor
        nodes += [helper.make_node("Sub", [const("offset", np.array(card.scale.offset, dtype=np.float64)), "score"],
                                   ["off_minus"]),
                  helper.make_node("Div", ["off_minus", const("factor", np.array(card.scale.factor, dtype=np.float64))],
                                   ["logit"]),
                  helper.make_node("Sigmoid", ["logit"], ["pd"])]
        outputs.append(helper.make_tensor_value_info("pd", TensorProto.DOUBLE, ["N", 1]))
    graph = helper.make_graph(nodes, f"fedcredit_scorecard_{card.party}", inputs, outputs, inits)
    model = helper.make_model(graph, producer_name="fedcredit",
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET),
                                             helper.make_opsetid("ai.onnx.ml", ONNX_ML_OPSET)])
    model.ir_version = 8  # readable by every onnxruntime since 1.10
    helper.set_model_props(model, {"fedcredit.party": card.party, "fedcredit.role": card.role,
                                   "fedcredit.scale": f"{card.scale.base_points:g}/{card.scale.base_odds:g}/"
                                                      f"{card.scale.pdo:g}",
                                   "fedcredit.passive_parties": ",".join(passive_parties)})
    onnx.checker.check_model(model, full_check=True)
    return bytes(model.SerializeToString())


def export_scorecard_part(artifact: Artifact, out_dir: str | Path) -> dict[str, Path]:
    """Write ``scorecard.csv`` and ``scorecard.onnx`` of a vertical LR part's scorecard (this party's share)."""
    card, passives = scorecard_of(artifact)
    out_dir = Path(out_dir)
    targets = {"scorecard": out_dir / "scorecard.csv", "onnx": out_dir / "scorecard.onnx"}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite existing export file(s) {existing}")
    write_file(targets["scorecard"], scorecard_csv_bytes(card, passives), PUBLIC_MODE, exclusive=True, what="export")
    write_file(targets["onnx"], scorecard_onnx_bytes(card, passives), PUBLIC_MODE, exclusive=True, what="export")
    return targets


def export_artifact(
    artifact: Artifact,
    out_dir: str | Path,
    scale: ScoreScale | None = None,
    bins: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Path]:
    """Write ``scorecard.csv``, ``model.linear.json`` and ``model.pmml`` for a verified horizontal-lr artifact,
    or ``scorecard.csv`` and ``scorecard.onnx`` for a vertical LR part with a scorecard.

    ``bins`` defaults to ``schema.json``'s ``preprocessing.bins`` when the training
    run recorded (federated) bin edges there.  Refuses to overwrite any file.  A
    scorecard part's scale is the one it was built on (``scale`` does not apply).
    """
    if artifact.manifest.kind in ("vertical-lr-label", "vertical-lr-passive"):
        return export_scorecard_part(artifact, out_dir)
    model = LinearModel.from_artifact(artifact)
    scale = scale or ScoreScale()
    if bins is None:
        bins = artifact.schema.get("preprocessing", {}).get("bins")
    out_dir = Path(out_dir)
    targets = {"scorecard": out_dir / "scorecard.csv", "linear_json": out_dir / "model.linear.json",
               "pmml": out_dir / "model.pmml"}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing:
        raise ConfigError(f"refusing to overwrite existing export file(s) {existing}")
    export_scorecard_csv(model, targets["scorecard"], scale, bins)
    export_linear_json(model, targets["linear_json"], scale)
    export_pmml(model, targets["pmml"])
    return targets
