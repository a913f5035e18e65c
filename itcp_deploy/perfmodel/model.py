"""The fitted performance model: additive over layers, so the DP can search it exactly.

``predicted_ms(widths) = constant_ms + sum over layers of tables[layer][i_in, i_out]`` where ``i_in`` and
``i_out`` index the candidates of the layer's input and output groups. The whole-network calibration
(scale and offset) is already folded into the tables and the constant.

A model fitted on mixed-precision engines (issue 27) also holds ``precision_tables[layer][(p_in, p_out)]``,
the layer's table when its input group is at ``p_in`` and its output group at ``p_out``
(:mod:`itcp_deploy.perfmodel.mixed`); ``tables`` are then its all-fp32 tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from itcp_deploy.atomic_io import read_json, write_json
from itcp_deploy.errors import InputFileError, UsageError
from itcp_deploy.finite import check_number, check_numbers
from itcp_deploy.perfmodel.mixed import SAME, Combo, combo_key, layer_combos
from itcp_deploy.space import PruningSpace

PERF_MODEL_SCHEMA = 1


def _check_numbers(model: PerfModel, path: str | os.PathLike[str]) -> None:
    """Latencies are finite and >= 0 (the offset may be negative): NaN or inf would crash the DP's binning."""
    fix = "regenerate it with `itcp-deploy fit`"
    for name, table in model.tables.items():
        check_numbers(table, f"perf model {path}", f"tables.{name}", fix)
    for name, by_combo in model.precision_tables.items():
        for combo, table in by_combo.items():
            check_numbers(table, f"perf model {path}", f"precision_tables.{name}.{combo_key(combo)}", fix)
    check_number(model.constant_ms, f"perf model {path}", "constant_ms", fix, minimum=None)
    check_numbers(model.calibration, f"perf model {path}", "calibration", fix, minimum=None)
    if model.dense_measured_ms is not None:
        check_number(model.dense_measured_ms, f"perf model {path}", "dense_measured_ms", fix)
    check_number(model.removal_ms_per_element, f"perf model {path}", "removal_ms_per_element", fix)


@dataclass(frozen=True)
class FitReport:
    """How well the model predicts engines it was not fitted on, next to the noise floor and a FLOPs model.

    ``validation``: ``holdout`` (the profile's holdout engines) or ``cross-validation`` (k-fold over the
    design engines, when the profile has no holdout engines). Percentages are of measured latency.
    """

    mape_pct: float
    max_pct: float
    flops_mape_pct: float
    flops_max_pct: float
    noise_pct: float
    threshold_pct: float
    n_design: int
    n_validation: int
    validation: str = "holdout"
    rejected: bool = False
    bar_pct: float = float("nan")  # the error the model should reach (validate.bar_pct); above it, not rejected

    def rows(self) -> list[tuple[str, float, float]]:
        """(model, mean abs % error, max abs % error) for a report table."""
        return [
            ("perf model (tables)", self.mape_pct, self.max_pct),
            ("linear FLOPs model", self.flops_mape_pct, self.flops_max_pct),
            ("noise floor (repeat runs)", self.noise_pct, float("nan")),
        ]


@dataclass
class PerfModel:
    """Predicted latency of any width plan of ``space``; see the module docstring."""

    space: PruningSpace
    tables: dict[str, np.ndarray]
    constant_ms: float
    method: str = "table"
    report: FitReport | None = None
    meta: dict[str, str] = field(default_factory=dict)  # the identity of its profile (Profile.identity)
    calibration: tuple[float, float] = (1.0, 0.0)  # (scale, offset ms) of sum(layer times) -> network latency
    schema: int = PERF_MODEL_SCHEMA
    precision_tables: dict[str, dict[Combo, np.ndarray]] = field(default_factory=dict)
    dense_measured_ms: float | None = None  # the profile's dense engine (median): see dense_reference_ms
    removal_ms_per_element: float = 0.0  # what a removed residual branch leaves: see on_space

    def layer_table(self, layer_name: str, combo: Combo = SAME) -> np.ndarray:
        """Latency (ms) of one layer, shape (len C_in, len C_out) over its groups' candidates; ``combo``: the
        precisions of its input and output groups (a mixed-precision model only)."""
        if layer_name not in self.tables:
            raise UsageError(
                f"layer {layer_name!r} is not in the perf model of {self.space.model}",
                "fit the perf model on a profile of this model",
            )
        if combo == SAME:
            return self.tables[layer_name]
        table = self.precision_tables.get(layer_name, {}).get(combo)
        if table is None:
            raise UsageError(f"the perf model has no table of {layer_name} at precisions {combo_key(combo)}",
                             "fit it on a mixed-precision profile (profile-engines --precision mixed)")
        return table

    def predict_ms(self, widths: Mapping[str, int], int8_groups: tuple[str, ...] = ()) -> float:
        """Predicted latency of a width plan, with ``int8_groups`` quantized (a mixed-precision model)."""
        w = self.space.complete(widths)
        combos = layer_combos(self.space, int8_groups)
        total = self.constant_ms
        for layer in self.space.layers:
            i = self.space.group(layer.in_group).index(w[layer.in_group])
            j = self.space.group(layer.out_group).index(w[layer.out_group])
            total += float(self.layer_table(layer.name, combos[layer.name])[i, j])
        return float(total)

    def dense_ms(self) -> float:
        return self.predict_ms({})

    def dense_reference_ms(self) -> float:
        """The dense latency in this model's units, which a speed-up divides and another window's
        measurements are scaled by: the dense engine as measured in the profile when known, else predicted.
        The tables are fitted to the profile's measured ms, so a fit that errs at the dense plan (4-5% on a
        SqueezeNet and a RegNet-Y at 224) would otherwise shift every budget by that error, and the loop would
        judge a plan off by it although the model was right there (issue 24: the probes and round 0 disagreed
        on the same plan, 0.908 against 1.046 of prediction)."""
        return self.dense_measured_ms if self.dense_measured_ms else self.dense_ms()

    def scaled(self, factor: float) -> PerfModel:
        """Every prediction times ``factor`` (the measured dense latency kept): a model calibrated on random
        plans, put on the scale of the plans a search picks (``pipeline/probe.py``)."""
        return replace(self, tables={k: v * factor for k, v in self.tables.items()},
                       constant_ms=self.constant_ms * factor,
                       removal_ms_per_element=self.removal_ms_per_element * factor,
                       precision_tables={k: {c: t * factor for c, t in v.items()}
                                         for k, v in self.precision_tables.items()})

    def fixed_ms(self) -> float:
        """The predicted time no plan changes: the constant (work outside any layer, e.g. a detector's NMS)
        plus the layers whose groups are all fixed."""
        space = self.space
        return self.constant_ms + sum(float(self.tables[layer.name][0, 0]) for layer in space.layers
                                      if space.group(layer.in_group).fixed and space.group(layer.out_group).fixed)

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "kind": "itcp-perf-model",
            "method": self.method,
            "constant_ms": self.constant_ms,
            "calibration": list(self.calibration),
            "meta": dict(self.meta),
            "space": self.space.to_dict(),
            "tables": {k: np.asarray(v).tolist() for k, v in self.tables.items()},
            "precision_tables": {k: {combo_key(c): np.asarray(t).tolist() for c, t in v.items()}
                                 for k, v in self.precision_tables.items()},
            "report": asdict(self.report) if self.report else None,
            "dense_measured_ms": self.dense_measured_ms,
            "removal_ms_per_element": self.removal_ms_per_element,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PerfModel:
        d = read_json(path, "perf model")
        if (
            not isinstance(d, dict)
            or d.get("kind") != "itcp-perf-model"
            or d.get("schema") != PERF_MODEL_SCHEMA
        ):
            raise InputFileError(
                f"{path} is not a perf model of schema {PERF_MODEL_SCHEMA}",
                "regenerate it with `itcp-deploy fit PROFILE -o perf_model.json`",
            )
        try:
            space = PruningSpace.from_dict(d["space"])
            tables = {k: np.asarray(v, dtype=float) for k, v in d["tables"].items()}
            model = cls(
                space,
                tables,
                float(d["constant_ms"]),
                d.get("method", "table"),
                FitReport(**d["report"]) if d.get("report") else None,
                dict(d.get("meta", {})),
                tuple(d.get("calibration", (1.0, 0.0))),
                precision_tables={k: {tuple(c.split(">")): np.asarray(t, dtype=float) for c, t in v.items()}
                                  for k, v in d.get("precision_tables", {}).items()},
                dense_measured_ms=float(d["dense_measured_ms"]) if d.get("dense_measured_ms") else None,
                removal_ms_per_element=float(d.get("removal_ms_per_element", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputFileError(
                f"perf model {path} has malformed fields ({err.__class__.__name__}: {err})",
                "regenerate it with `itcp-deploy fit`",
            ) from err
        for layer in space.layers:
            want = (len(space.group(layer.in_group).candidates), len(space.group(layer.out_group).candidates))
            mixed = model.precision_tables.get(layer.name, {})
            if any(t.shape != want for t in [tables.get(layer.name, np.empty(0)), *mixed.values()]):
                raise InputFileError(
                    f"perf model {path}: table of {layer.name} is not {want}",
                    "regenerate it with `itcp-deploy fit`",
                )
        _check_numbers(model, path)
        return model


def on_space(perf: PerfModel, space: PruningSpace) -> PerfModel:
    """``perf`` on ``space``: the same layers, candidates that differ only by width 0 (a removed residual
    branch, :meth:`PruningSpace.with_removal`). A layer reading or writing a group at width 0 is gone from
    the network, but the branch's add and activation stay, no longer fused into its last conv (ONNX Runtime:
    a standalone Add and Relu, and layout reorders around them): the reader's cell costs
    ``removal_ms_per_element`` per element of its output (measured by the probes, ``pipeline/probe.py``;
    0 until then); every other cell is ``perf``'s.

    Raises:
        UsageError: ``space`` has a non-zero width ``perf`` was not fitted on.
    """
    tables, precision_tables = {}, {}
    for layer in space.layers:
        old_in, old_out = perf.space.group(layer.in_group).candidates, perf.space.group(layer.out_group).candidates
        cin, cout = space.group(layer.in_group).candidates, space.group(layer.out_group).candidates
        missing = [w for w in cin if w and w not in old_in] + [w for w in cout if w and w not in old_out]
        if missing:
            raise UsageError(f"width {missing[0]} of layer {layer.name} is not in the perf model",
                             "fit the perf model on a profile of this space")
        old_cells = [[(old_in.index(a), old_out.index(b)) if a and b else None for b in cout] for a in cin]
        left = [[perf.removal_ms_per_element * space.input_shape[0] * b * layer.out_hw[0] * layer.out_hw[1]
                 if not a and b else 0.0 for b in cout] for a in cin]
        tables[layer.name] = _moved(perf.layer_table(layer.name), old_cells) + np.array(left).reshape(len(cin), -1)
        if layer.name in perf.precision_tables:
            precision_tables[layer.name] = {c: _moved(t, old_cells) + np.array(left).reshape(len(cin), -1)
                                            for c, t in perf.precision_tables[layer.name].items()}
    return replace(perf, space=space, tables=tables, precision_tables=precision_tables)


def _moved(old: np.ndarray, cells: list[list[tuple[int, int] | None]]) -> np.ndarray:
    """``old``'s cell at each of ``cells`` (0 where None: a layer that is gone)."""
    return np.array([[old[c] if c is not None else 0.0 for c in row] for row in cells],
                    dtype=float).reshape(len(cells), len(cells[0]) if cells else 0)
