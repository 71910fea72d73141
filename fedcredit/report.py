"""The run report a person opens: ONE self-contained HTML file per party and run, plus the JSON behind it.

Why here: every party must be able to show its risk team what a run did with its data and
what came out, without a notebook and without sending anything anywhere.  The report is
built only from what the party itself holds (its own table, its own model part, and — at
the label party or a horizontal bank — labels and scores of its test rows), so writing it
reveals nothing new; a passive party's report has no label-derived figure because it has
none.

Structure (documented for the other engineers in docs/reports.md): :class:`ReportBuilder`
collects named sections into one JSON document (``FORMAT``); :func:`render_html` renders
whatever sections are present (an absent section is simply not shown) with one
autoescaping jinja2 template, so a feature name such as ``<script>`` is text, never markup.
Charts are matplotlib PNGs embedded as ``data:`` URIs: the file opens offline and loads no
external URL.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from crypto.files import write_text
from fedcredit.data import Table

__all__ = ["FORMAT", "SECTIONS", "ReportBuilder", "evaluation", "data_summary", "render_html", "write_report",
           "REPORT_HTML", "REPORT_JSON"]

FORMAT: Final = "fedcredit-report/1"
REPORT_HTML: Final = "report.html"
REPORT_JSON: Final = "report.json"
#: every top-level key a run report may carry, in the order they are rendered (docs/reports.md)
SECTIONS: Final = ("run", "compute", "data", "binning", "selection", "convergence", "trees", "scorecard",
                   "evaluation", "sent", "privacy", "psi")
_TOP_CATEGORIES = 20  # a category-count table longer than this lists the rest as one "(other)" row
_CURVE_POINTS = 201  # ROC/KS curves are resampled to this many points in the JSON


# --------------------------------------------------------------------------- sections from data


def _num(x: Any) -> float | None:
    """JSON-safe float: NaN/inf become null (json.dumps(allow_nan=False) refuses them)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def data_summary(table: Table, *, what: str = "training rows") -> dict[str, Any]:
    """Rows, per-feature missing rate and kind; numeric quantiles, categorical counts (NaN = missing)."""
    n = len(table)
    feats: list[dict[str, Any]] = []
    for j, name in enumerate(table.feature_names):
        col = table.X[:, j]
        miss = np.isnan(col)
        f: dict[str, Any] = {"name": name, "kind": table.kinds[j], "missing": int(miss.sum()),
                             "missing_rate": round(float(miss.mean()), 6) if n else 0.0}
        vals = col[~miss]
        if table.kinds[j] == "categorical":
            cats = table.categories.get(name, [])
            counts = np.bincount(vals.astype(np.int64), minlength=len(cats)) if len(vals) else np.zeros(len(cats))
            rows = sorted(((cats[k] if k < len(cats) else f"#{k}", int(c)) for k, c in enumerate(counts)),
                          key=lambda kv: (-kv[1], kv[0]))
            top = [{"category": c, "count": k} for c, k in rows[:_TOP_CATEGORIES]]
            rest = sum(k for _, k in rows[_TOP_CATEGORIES:])
            if rest:
                top.append({"category": "(other)", "count": int(rest)})
            f["categories"] = top
            f["n_categories"] = len(cats)
        elif len(vals):
            q = np.quantile(vals, [0.0, 0.25, 0.5, 0.75, 1.0])
            f.update({"min": _num(q[0]), "p25": _num(q[1]), "median": _num(q[2]), "p75": _num(q[3]),
                      "max": _num(q[4]), "mean": _num(vals.mean())})
        feats.append(f)
    out: dict[str, Any] = {"what": what, "rows": n, "n_features": table.n_features, "features": feats}
    if table.y is not None and n:
        out["events"] = int(np.sum(table.y))
        out["event_rate"] = round(float(np.mean(table.y)), 6)
    return out


def evaluation(model: str, y: np.ndarray, p: np.ndarray, *, note: str = "") -> dict[str, Any]:
    """One model's test figures from labels ``y`` and scores ``p`` (PD, higher = riskier).

    ROC/KS curves (resampled), gains/lift by score decile, calibration by decile of PD, score
    histogram per class.  Only a party that holds both ``y`` and ``p`` can call this.
    """
    from sklearn.metrics import roc_curve

    from fedcredit.metrics import auc, ks

    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    n, pos = len(y), int(y.sum())
    out: dict[str, Any] = {"model": model, "n": n, "events": pos, "auc": _num(auc(y, p)), "ks": _num(ks(y, p))}
    if note:
        out["note"] = note
    if n == 0:
        return out
    if 0 < pos < n:
        fpr, tpr, thr = roc_curve(y, p)
        i = int(np.argmax(tpr - fpr))
        out["ks_threshold"] = _num(thr[i])
        grid = np.linspace(0.0, 1.0, _CURVE_POINTS)
        out["roc"] = {"fpr": [round(float(v), 5) for v in grid],
                      "tpr": [round(float(v), 5) for v in np.interp(grid, fpr, tpr)]}
    # gains/lift: rows sorted riskiest first, cut into (at most) 10 equal groups
    order = np.argsort(-p, kind="stable")
    groups = np.array_split(order, min(10, n))
    cum_ev, cum_n, rate = 0, 0, pos / n
    gains = []
    for k, g in enumerate(groups, start=1):
        ev = int(y[g].sum())
        cum_ev, cum_n = cum_ev + ev, cum_n + len(g)
        gains.append({"decile": k, "n": len(g), "events": ev, "event_rate": round(ev / len(g), 6) if len(g) else None,
                      "cum_population": round(cum_n / n, 6), "cum_events_share": round(cum_ev / pos, 6) if pos else None,
                      "lift": round((ev / len(g)) / rate, 4) if rate and len(g) else None,
                      "min_score": _num(p[g].min()), "max_score": _num(p[g].max())})
    out["gains"] = gains
    # calibration: mean predicted PD vs observed event rate per decile of PD
    cal = []
    for k, g in enumerate(reversed(groups), start=1):
        if len(g):
            cal.append({"bin": k, "n": len(g), "mean_pd": round(float(p[g].mean()), 6),
                        "event_rate": round(float(y[g].mean()), 6)})
    out["calibration"] = cal
    lo, hi = float(np.min(p)), float(np.max(p))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
    out["score_hist"] = {"edges": [round(float(e), 6) for e in edges],
                         "events": np.histogram(p[y == 1], bins=edges)[0].astype(int).tolist(),
                         "non_events": np.histogram(p[y == 0], bins=edges)[0].astype(int).tolist()}
    return out


# --------------------------------------------------------------------------- the builder


class ReportBuilder:
    """Collects one party's run report, section by section; :meth:`write` renders it.

    ``put`` takes any documented section (``SECTIONS``) as JSON-able data, so the engineers
    who own binning, LR convergence or scorecards fill their keys without touching this file;
    an unknown key is an error (a typo would otherwise vanish from the report silently).
    """

    def __init__(self, *, party: str, role: str, run_id: str, job_type: str, title: str = "") -> None:
        self.doc: dict[str, Any] = {
            "format": FORMAT,
            "title": title or f"{job_type} run {run_id} — party {party}",
            "party": party, "role": role, "run_id": run_id, "job_type": job_type,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }

    def put(self, key: str, value: Any) -> ReportBuilder:
        if key not in SECTIONS:
            raise KeyError(f"report section {key!r} is not one of {SECTIONS} (docs/reports.md)")
        if value is not None and value != [] and value != {}:
            self.doc[key] = value
        return self

    def data(self, table: Table, *, what: str = "training rows") -> ReportBuilder:
        return self.put("data", data_summary(table, what=what))

    def evaluate(self, model: str, y: np.ndarray | None, p: np.ndarray | None, *, note: str = "") -> ReportBuilder:
        """Add one model's test figures (several models render side by side); skipped without y or p."""
        if y is None or p is None or len(np.asarray(y)) == 0:
            return self
        self.doc.setdefault("evaluation", []).append(evaluation(model, y, p, note=note))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.doc

    def write(self, out_dir: str | Path) -> Path:
        return write_report(self.doc, out_dir)


def write_report(doc: Mapping[str, Any], out_dir: str | Path, *, stem: str = "report") -> Path:
    """Write ``<stem>.json`` and ``<stem>.html`` (owner-only, atomic) into ``out_dir``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_text(out / f"{stem}.json", json.dumps(doc, indent=1, allow_nan=False, default=_json_default))
    html_path = out / f"{stem}.html"
    write_text(html_path, render_html(doc))
    return html_path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return _num(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"report value of type {type(o).__name__} is not JSON")


# --------------------------------------------------------------------------- charts


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(text: Any) -> str:
    """Untrusted text as a matplotlib label: ``$`` would start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (6.0, 3.4)) -> str:
    """Run ``draw(fig)`` and return the figure as a ``data:image/png;base64,…`` URI."""
    plt = _plt()
    fig = plt.figure(figsize=size)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _floats(xs: Sequence[Any]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in xs]


def _chart_binning(t: Mapping[str, Any]) -> str | None:
    labels = [_label(x) for x in _bin_labels(t)]
    woe, rate = _floats(t.get("woe") or []), _floats(t.get("event_rate") or [])
    counts = _floats(t.get("counts") or [])
    if not labels or len(woe) != len(labels):
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(labels))
        if len(counts) == len(labels):
            ax.bar(x, counts, color="#c7d7ea", label="rows")
            ax.set_ylabel("rows")
        ax2 = ax.twinx()
        ax2.plot(x, woe, "o-", color="#1f4e79", label="WOE")
        if len(rate) == len(labels):
            ax2.plot(x, rate, "s--", color="#c0504d", label="event rate")
        ax2.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
        ax.set_title(_label(f"{_feature(t)}: IV {_total_iv(t):.4f}"), fontsize=9)

    return _png(draw)


def _chart_iv(tables: Sequence[Mapping[str, Any]]) -> str | None:
    rows = sorted(((_feature(t), _total_iv(t)) for t in tables), key=lambda r: -r[1])[:40]
    if not rows:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        ax.barh([_label(r[0]) for r in rows][::-1], [r[1] for r in rows][::-1], color="#1f4e79")
        ax.set_xlabel("information value")
        ax.tick_params(axis="y", labelsize=7)

    return _png(draw, (6.0, max(2.0, 0.22 * len(rows) + 0.8)))


def _chart_convergence(rows: Sequence[Mapping[str, Any]]) -> str | None:
    if not rows:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        ep = [r.get("epoch") for r in rows]
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            ys = _floats([r.get(key) for r in rows])
            if any(math.isfinite(v) for v in ys):
                ax.plot(ep, ys, style, label=key.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.set_ylabel("log-loss")
        ax.legend(fontsize=8)

    return _png(draw)


def _with_curves(evals: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in evals if e.get("roc")]


def _chart_roc_ks(evals: Sequence[Mapping[str, Any]]) -> str | None:
    curves = _with_curves(evals)
    if not curves:
        return None

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for e in curves:
            fpr, tpr = np.array(e["roc"]["fpr"]), np.array(e["roc"]["tpr"])
            ax1.plot(fpr, tpr, label=_label(f"{e['model']} AUC {e.get('auc') or float('nan'):.4f}"))
            ax2.plot(fpr, tpr - fpr, label=_label(f"{e['model']} KS {e.get('ks') or float('nan'):.4f}"))
        ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax1.set_xlabel("false positive rate")
        ax1.set_ylabel("true positive rate")
        ax1.set_title("ROC", fontsize=9)
        ax1.legend(fontsize=7, loc="lower right")
        ax2.set_xlabel("false positive rate (share of goods declined)")
        ax2.set_ylabel("TPR − FPR")
        ax2.set_title("KS", fontsize=9)
        ax2.legend(fontsize=7)

    return _png(draw, (9.0, 3.6))


def _chart_gains(evals: Sequence[Mapping[str, Any]]) -> str | None:
    with_gains = [e for e in evals if e.get("gains")]
    if not with_gains:
        return None

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        for e in with_gains:
            g = e["gains"]
            ax1.plot([0] + [r["cum_population"] for r in g], [0] + _floats([r["cum_events_share"] for r in g]),
                     "o-", ms=3, label=_label(e["model"]))
            ax2.plot([r["decile"] for r in g], _floats([r["lift"] for r in g]), "o-", ms=3, label=_label(e["model"]))
        ax1.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
        ax1.set_xlabel("share of applicants (riskiest first)")
        ax1.set_ylabel("share of bads captured")
        ax1.set_title("cumulative gains", fontsize=9)
        ax1.legend(fontsize=7)
        ax2.axhline(1.0, ls="--", c="grey", lw=0.8)
        ax2.set_xlabel("score decile (1 = riskiest)")
        ax2.set_ylabel("lift")
        ax2.set_title("lift", fontsize=9)

    return _png(draw, (9.0, 3.6))


def _chart_calibration(evals: Sequence[Mapping[str, Any]]) -> str | None:
    with_cal = [e for e in evals if e.get("calibration")]
    if not with_cal:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        hi = 0.0
        for e in with_cal:
            xs, ys = [r["mean_pd"] for r in e["calibration"]], [r["event_rate"] for r in e["calibration"]]
            hi = max(hi, *xs, *ys)
            ax.plot(xs, ys, "o-", ms=3, label=_label(e["model"]))
        ax.plot([0, hi], [0, hi], ls="--", c="grey", lw=0.8)
        ax.set_xlabel("mean predicted PD (decile)")
        ax.set_ylabel("observed event rate")
        ax.legend(fontsize=7)

    return _png(draw, (5.0, 3.6))


def _chart_score_hist(e: Mapping[str, Any]) -> str | None:
    h = e.get("score_hist")
    if not h:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        edges = np.array(h["edges"])
        mid, w = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ne, ev = np.array(h["non_events"], dtype=float), np.array(h["events"], dtype=float)
        ax.bar(mid, ne / max(ne.sum(), 1), width=w, alpha=0.55, label="goods (y=0)", color="#4f81bd")
        ax.bar(mid, ev / max(ev.sum(), 1), width=w, alpha=0.55, label="bads (y=1)", color="#c0504d")
        ax.set_xlabel("score (PD)")
        ax.set_ylabel("share of class")
        ax.set_title(_label(e["model"]), fontsize=9)
        ax.legend(fontsize=7)

    return _png(draw, (4.6, 3.2))


def _chart_psi(rows: Sequence[Mapping[str, Any]]) -> str | None:
    if not rows:
        return None
    colours = {"stable": "#5b9c5b", "watch": "#e0a030", "act": "#c0504d"}

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        names = [_label(r["name"]) for r in rows][::-1]
        vals = [float(r["psi"]) for r in rows][::-1]
        ax.barh(names, vals, color=[colours.get(str(r["band"]), "grey") for r in rows][::-1])
        ax.axvline(0.1, ls="--", c="#e0a030", lw=0.8)
        ax.axvline(0.25, ls="--", c="#c0504d", lw=0.8)
        ax.set_xlabel("population stability index")
        ax.tick_params(axis="y", labelsize=7)

    return _png(draw, (6.0, max(2.0, 0.24 * len(rows) + 0.9)))


def _chart_psi_bins(item: Mapping[str, Any]) -> str | None:
    bins = item.get("bins") or []
    if not bins:
        return None

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(bins))
        ax.bar(x - 0.2, [b["expected"] for b in bins], width=0.4, label="reference", color="#4f81bd")
        ax.bar(x + 0.2, [b["actual"] for b in bins], width=0.4, label="scored", color="#c0504d")
        ax.set_xticks(x)
        ax.set_xticklabels([_label(b["bin"]) for b in bins], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("share")
        ax.set_title(_label(f"{item['name']}: PSI {item['psi']:.4f} ({item['band']})"), fontsize=9)
        ax.legend(fontsize=7)

    return _png(draw, (6.0, 3.2))


# --------------------------------------------------------------------------- binning table helpers


def _feature(t: Mapping[str, Any]) -> str:
    return str(t.get("feature", t.get("name", "?")))


def _bin_labels(t: Mapping[str, Any]) -> list[str]:
    labels = t.get("labels", t.get("bins"))
    return [str(x) for x in labels] if isinstance(labels, list) else []


def _total_iv(t: Mapping[str, Any]) -> float:
    for key in ("total_iv", "iv_total"):
        if isinstance(t.get(key), (int, float)):
            return float(t[key])
    iv = t.get("iv")
    if isinstance(iv, (int, float)):
        return float(iv)
    if isinstance(iv, list):
        return float(sum(v for v in iv if isinstance(v, (int, float))))
    return float("nan")


def _bin_rows(t: Mapping[str, Any]) -> list[dict[str, Any]]:
    labels = _bin_labels(t)
    cols = ("counts", "events", "non_events", "event_rate", "woe", "iv")
    out = []
    for k, lab in enumerate(labels):
        row: dict[str, Any] = {"bin": lab}
        for c in cols:
            v = t.get(c)
            row[c] = v[k] if isinstance(v, list) and k < len(v) else None
        out.append(row)
    return out


# --------------------------------------------------------------------------- rendering


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else (f"{v:.{digits}f}" if abs(v) < 1e6 else f"{v:.4g}")
    return str(v)


def _pct(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) else f"{100 * float(v):.1f} %"


def _environment() -> Any:
    from jinja2 import Environment, FileSystemLoader

    # an absent section is an undefined name, which renders as nothing: the template tests for each one
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["pct"] = _pct
    return env


def _sections(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The template's view: each present section with its charts; absent sections stay absent."""
    v: dict[str, Any] = {}
    if isinstance(doc.get("data"), Mapping):
        v["data"] = doc["data"]
    tables = [t for t in doc.get("binning") or [] if isinstance(t, Mapping)]
    if tables:
        v["binning"] = [{"feature": _feature(t), "kind": t.get("kind"), "owner": t.get("owner"), "total_iv": _total_iv(t),
                         "rows": _bin_rows(t), "chart": _chart_binning(t)} for t in tables]
        v["iv_chart"] = _chart_iv(tables)
    if isinstance(doc.get("selection"), Mapping):
        v["selection"] = _selection(doc["selection"])
    conv = [r for r in doc.get("convergence") or [] if isinstance(r, Mapping)]
    if conv:
        v["convergence"] = {"rows": conv, "chart": _chart_convergence(conv)}
    if isinstance(doc.get("trees"), Mapping):
        v["trees"] = doc["trees"]
    if doc.get("scorecard") is not None:
        card = doc["scorecard"]  # the scorecard step's document: its points table is what a reader wants
        rows = card.get("rows") if isinstance(card, Mapping) else None
        v["scorecard"] = _generic(rows if isinstance(rows, list) and rows else card)
    evals = [e for e in doc.get("evaluation") or [] if isinstance(e, Mapping) and "model" in e]
    if evals:
        v["evaluation"] = {
            "rows": evals, "roc_ks": _chart_roc_ks(evals), "gains": _chart_gains(evals),
            "calibration": _chart_calibration(evals),
            "score_hists": [c for c in (_chart_score_hist(e) for e in evals) if c],
            "gains_tables": [e for e in evals if e.get("gains")],
        }
    if isinstance(doc.get("sent"), Mapping):
        v["sent"] = doc["sent"]
    if isinstance(doc.get("privacy"), Mapping):
        v["privacy"] = doc["privacy"]
    if isinstance(doc.get("psi"), Mapping):
        psi = doc["psi"]
        items = ([psi["score"]] if isinstance(psi.get("score"), Mapping) else []) + list(psi.get("features") or [])
        v["psi"] = {**psi, "rows": items, "chart": _chart_psi(items),
                    "bin_charts": [c for c in (_chart_psi_bins(i) for i in items) if c]}
    if isinstance(doc.get("run"), Mapping):
        v["run"] = doc["run"]
    if isinstance(doc.get("compute"), Mapping):
        v["compute"] = doc["compute"]
    return v


def _selection(sel: Mapping[str, Any]) -> dict[str, Any]:
    """Rows ``{feature, owner, iv, kept}`` from either documented shape: ``features: [{feature, owner?, iv?,
    selected}]`` (+ ``min_iv``), or ``selected`` / ``dropped`` lists of names or ``{feature, iv}``."""
    rows: list[dict[str, Any]] = []
    if isinstance(sel.get("features"), list):
        for f in sel["features"]:
            if isinstance(f, Mapping):
                rows.append({"feature": f.get("feature"), "owner": f.get("owner"), "iv": f.get("iv"),
                             "kept": bool(f.get("selected"))})
    else:
        for key, kept in (("selected", True), ("dropped", False)):
            for f in sel.get(key) or []:
                m = f if isinstance(f, Mapping) else {"feature": f}
                rows.append({"feature": m.get("feature"), "owner": m.get("owner"), "iv": m.get("iv"), "kept": kept})
    threshold = sel.get("threshold", sel.get("min_iv"))
    return {"threshold": threshold, "rows": rows}


def _generic(value: Any) -> Any:
    """A section this module has no special layout for (e.g. ``scorecard``): a table of its rows, or key/values."""
    if isinstance(value, list) and value and all(isinstance(r, Mapping) for r in value):
        cols: list[str] = []
        for r in value:
            cols += [str(k) for k in r if str(k) not in cols]
        return {"columns": cols, "rows": [[r.get(c) for c in cols] for r in value]}
    if isinstance(value, Mapping):
        return {"columns": ["key", "value"], "rows": [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v]
                                                     for k, v in value.items()]}
    return {"columns": ["value"], "rows": [[json.dumps(value, default=str)]]}


def render_html(doc: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (sections present in ``doc`` only; text autoescaped)."""
    head = {k: doc.get(k, "") for k in ("title", "party", "role", "run_id", "job_type", "created")}
    return str(_environment().get_template("report.html.j2").render(head=head, s=_sections(doc)))


# --------------------------------------------------------------------------- the hooks the protocols call


def trees_summary(trees: Sequence[Sequence[Mapping[str, Any]]], config: Mapping[str, Any] | None = None,
                  splits_by_party: Mapping[str, int] | None = None) -> dict[str, Any]:
    """SecureBoost's public shape at the label party: trees, realised depth, leaves, splits per owner."""
    def depth(tree: Sequence[Mapping[str, Any]], i: int, guard: int = 0) -> int:
        nd = tree[i]
        if nd.get("leaf") or guard > 64:
            return 0
        return 1 + max(depth(tree, int(nd[k]), guard + 1) for k in ("left", "right"))

    out: dict[str, Any] = {"n_trees": len(trees)}
    if config and "max_depth" in config:
        out["max_depth (configured)"] = config["max_depth"]
    out["depth (deepest tree)"] = max((depth(t, 0) for t in trees if t), default=0)
    out["leaves"] = sum(1 for t in trees for nd in t if nd.get("leaf"))
    if splits_by_party is not None:
        out["splits_by_party"] = dict(splits_by_party)
    return out


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return path.name


def _never_fails_the_run(fn: Callable[..., str]) -> Callable[..., str | None]:
    """A report is written after the model is saved: a failure to write it is said, never fatal to the run."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str | None:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the trained model matters more than its report
            print(f"[fedcredit report] not written: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return None

    return wrapper


def _run_privacy(reply: Mapping[str, Any], model_dir: Path) -> Mapping[str, Any] | None:
    """The run JSON's ``"privacy"`` object: from the party's reply, else from the label party's protocol report
    (``vertical_lr_report.json`` / ``secureboost_test_report.json``, where the DP hooks write it)."""
    if isinstance(reply.get("privacy"), Mapping):
        return reply["privacy"]
    for name in ("vertical_lr_report.json", "secureboost_test_report.json"):
        f = model_dir / name
        if f.exists():
            doc = json.loads(f.read_text(encoding="utf-8"))
            for d in (doc, doc.get("train") if isinstance(doc, Mapping) else None):  # SecureBoost: under "train"
                if isinstance(d, Mapping) and isinstance(d.get("privacy"), Mapping):
                    return d["privacy"]
    return None


@_never_fails_the_run
def vertical_report(*, model_dir: Path, state_dir: Path, reply: Mapping[str, Any], train: Table,
                    test_y: np.ndarray | None = None, test_scores: np.ndarray | None = None,
                    sections: Mapping[str, Any] | None = None,
                    sent_by_tag: Sequence[Mapping[str, Any]] = (),
                    config: Mapping[str, Any] | None = None) -> str:
    """A vertical party's report (and, at the label party, the PSI reference); returns its path under ``state_dir``.

    ``reply`` is the party's public reply (its scalars become the Run section; its ``"privacy"`` object,
    when a DP option wrote one, goes to the privacy report); ``sections`` are the other steps' documented
    keys (``binning``, ``selection``, ``convergence``, ``trees``, ``scorecard``); ``config`` the job's model
    parameters (which attack figures apply).  A passive party passes no labels or scores: its report has
    no label-derived section.
    """
    from fedcredit.monitor import build_reference, save_reference
    from fedcredit.privacy import privacy_section

    role = str(reply.get("role", ""))
    b = ReportBuilder(party=train.party, role=role, run_id=str(reply.get("run_id", "")),
                      job_type=str(reply.get("type", "")))
    b.put("run", {k: v for k, v in reply.items() if not isinstance(v, (dict, list))})
    b.data(train)
    binning = model_dir / "binning.json"  # the binning step's tables and selection, when the job bins
    if binning.exists():
        saved = json.loads(binning.read_text(encoding="utf-8"))
        for k in ("binning", "selection"):
            b.put(k, saved.get(k))
    card = model_dir / "scorecard.json"  # this party's own points per bin, when the job builds a scorecard
    if card.exists():
        b.put("scorecard", json.loads(card.read_text(encoding="utf-8")).get("scorecard"))
    for k, v in (sections or {}).items():
        b.put(k, v)
    b.evaluate("federated (joint model)", test_y, test_scores)
    if role == "passive":
        b.put("sent", {"note": "Everything this party sent to its peers during the run (payload sizes; the "
                               "content of each message is listed in the protocol's leakage table).",
                       **{k: reply.get(k) for k in ("messages_sent", "bytes_sent", "messages_received",
                                                    "bytes_received")},
                       "by_tag": list(sent_by_tag)})
    protocol = "secureboost" if "secureboost" in str(reply.get("type", "")) else "vertical-lr"
    privacy = _run_privacy(reply, model_dir)
    b.put("privacy", privacy_section(protocol=protocol, role=role, sent_by_tag=sent_by_tag, config=config,
                                     privacy=privacy, also=("psi", "vertical-job")))
    path = b.write(model_dir)
    if role == "label":
        save_reference(model_dir, build_reference(train, test_scores, run_id=b.doc["run_id"], party=train.party,
                                                  score_rows="the run's test rows, scored by the joint model"))
    return _rel(path, state_dir)


@_never_fails_the_run
def horizontal_report(*, model_dir: Path, run_id: str, family: str, train: Table, test: Table | None,
                      federated: np.ndarray | None, local_only: Callable[[Table], np.ndarray] | None = None,
                      train_scores: Callable[[], np.ndarray] | None = None, run: Mapping[str, Any] | None = None,
                      sections: Mapping[str, Any] | None = None) -> str:
    """A bank's report: its data, the federated model and its own local-only model side by side on its
    test rows, and the PSI reference; returns the path relative to the dir above ``model_dir``'s parent
    (``models/<run>/report.html`` under the party's state dir).

    The pooled-plaintext figure needs every bank's rows, which no bank has: it is not in a bank's report
    (``simulations/bench_horizontal.py`` prints it).
    """
    from fedcredit.monitor import build_reference, save_reference

    b = ReportBuilder(party=train.party, role="bank", run_id=run_id, job_type=f"horizontal ({family})")
    b.put("run", dict(run or {}))
    b.data(train)
    for k, v in (sections or {}).items():
        b.put(k, v)
    ref_scores, ref_rows = federated, "this bank's test rows, scored by the federated model"
    if test is not None and test.y is not None and federated is not None:
        b.evaluate("federated", test.y, federated, note="this bank's test rows")
        if local_only is not None:
            b.evaluate("local only", test.y, local_only(test), note="same model and optimiser on this bank's rows alone")
    elif train_scores is not None:
        ref_scores, ref_rows = train_scores(), "this bank's training rows, scored by the federated model"
    path = b.write(model_dir)
    save_reference(model_dir, build_reference(train, ref_scores, run_id=run_id, party=train.party, score_rows=ref_rows))
    return _rel(path, model_dir.parent.parent)


def add_figures(model_dir: Path, model: str, figures: Mapping[str, Any], *, note: str = "") -> Path | None:
    """Append a figure row (no curves) to an existing report and re-render it; None if there is no report."""
    path = Path(model_dir) / REPORT_JSON
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    row = {"model": model, **{k: figures.get(k) for k in ("auc", "ks") if k in figures}, "n": figures.get("n_test")}
    if note:
        row["note"] = note
    doc.setdefault("evaluation", []).append(row)
    return write_report(doc, model_dir)
