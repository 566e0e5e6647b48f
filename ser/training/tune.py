"""Hyper-parameter search on Ray Tune: ``search(metadata, inputs, augmented, params, ...)``.

What a trial is: a set of values for some keys of ``model.<type>`` (``tune.space.<type>``), all
other keys as params.yaml has them. It is scored exactly as ``train`` cross-validates: the same
labelled clips and speaker-independent folds (``ser.training.train.folded_data``) and the same per-fold fit
(``ser.training.train.fit_fold``, seeded by ``train.seed``), so a trial of the current values reproduces
the train stage's fold scores (to the last digit with ``cpus_per_trial: 1``: the train stage
fits every fold on one math thread too, and a solver's sums depend on the thread count). After each fold the trial reports
the running mean over the folds done (``cv_uar_mean`` ...): ASHA (``tune.scheduler: asha``)
compares trials at equal fold counts and stops those that trail; every trial sees the folds in
the same order.

Search: Optuna's TPE sampler (``ray.tune.search.optuna.OptunaSearch``), seeded. The first
``startup_trials`` configurations are seeded random draws that do not depend on any result, so
they are the same whatever ``max_concurrent`` is; later ones are modelled on the results finished
(or running: Optuna's constant liar) when Tune asks, which depends on timing when trials run in
parallel. With ``max_concurrent: 1`` the whole sequence, and so the best trial, is a function of
the params. Each scikit-learn trial's score is deterministic either way.

Where: ``address`` names a running Ray cluster (the driver joins it; this checkout's ``ser`` is
shipped to the workers, so trials run the code that started them); without one a local Ray is
started on loopback with no dashboard, and stopped at the end. A Ray that is already initialized
in this process is used and left running. The large inputs (features, folds) are put into the
object store once (``tune.with_parameters``), not shipped per trial.

MLflow: the driver logs (a Tune callback), never the trials, so a cluster's workers need no access
to the store: one parent run per search and a nested run per trial (``mlflow.parentRunId``) with
its values as ``model.<type>.<key>`` params, per-fold scores as steps and the fold means.

The best trial (among those that ran every fold; ties go to the earlier trial) is returned as a
params.yaml fragment and as ``-S key=value`` overrides for ``dvc exp run``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from ray import tune as ray_tune

from ser.training.metrics import METRICS, mean_std
from ser.models import resolve_feature_input
from ser.params import (Choice, IntRange, LogUniform, Params, ParamsError, Section, TuneParams, Uniform, flatten,
                        override, typed)
from ser.runtime.ray_session import ray_session
from ser.training.tracking import TrainingRun, loggable_params, retry, run_tags, use_experiment
from ser.training.train import LabelledData, ModelInputs, fit_fold, folded_data, tensorflow_threads

log = logging.getLogger(__name__)

# ---- the space --------------------------------------------------------------------------------
# A space is ``tune.space.<type>``: ``{key: distribution}``, each distribution a section of
# ser.params (LogUniform, Uniform, IntRange, Choice); the functions below also take it as written.
Space = dict[str, Section]
DISTRIBUTIONS = {"loguniform": LogUniform, "uniform": Uniform, "int": IntRange, "choice": Choice}


def typed_space(space: dict[str, Any], model_type: str = "<type>") -> Space:
    """``space`` with each distribution typed (those already typed kept as they are)."""
    distributions = {}
    for key, spec in space.items():
        if not isinstance(spec, Section):
            kinds = list(spec) if isinstance(spec, dict) else []
            if len(kinds) != 1 or kinds[0] not in DISTRIBUTIONS:
                raise ParamsError(f"tune.space.{model_type}.{key}: one of {', '.join(DISTRIBUTIONS)} "
                                  f"expected, got {spec!r}")
            spec = typed(DISTRIBUTIONS[kinds[0]], spec, f"tune.space.{model_type}.{key}")
        distributions[key] = spec
    return distributions


def _kind(spec: Section) -> tuple[str, Any]:
    """A typed distribution's name in params.yaml and its bounds (or choices)."""
    if isinstance(spec, LogUniform):
        return "loguniform", spec.loguniform
    if isinstance(spec, Uniform):
        return "uniform", spec.uniform
    if isinstance(spec, IntRange):
        return "int", spec.bounds
    if isinstance(spec, Choice):
        return "choice", spec.choice
    raise ParamsError(f"tune.space: unknown distribution {type(spec).__name__}")


def _encode(value: Any) -> str:
    # Optuna's categorical choices must be scalars; lists (layer sizes) and null travel as JSON.
    return json.dumps(value)


def optuna_space(space: Space | dict[str, Any]) -> dict[str, Any]:
    """``tune.space.<type>`` as Optuna distributions (choices JSON-encoded, ``int`` ends included)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions = {}
    for key, spec in typed_space(space).items():
        kind, bounds = _kind(spec)
        if kind == "loguniform":  # bounds written as integers are still the ends of a real range
            distributions[key] = FloatDistribution(float(bounds[0]), float(bounds[1]), log=True)
        elif kind == "uniform":
            distributions[key] = FloatDistribution(float(bounds[0]), float(bounds[1]))
        elif kind == "int":
            distributions[key] = IntDistribution(*bounds)
        else:
            distributions[key] = CategoricalDistribution([_encode(v) for v in bounds])
    return distributions


def decode(config: dict[str, Any], space: Space | dict[str, Any]) -> dict[str, Any]:
    """A trial's config (as Optuna drew it) -> the model params values, in the space's key order."""
    values = {}
    for key, spec in typed_space(space).items():
        value = config[key]
        kind, _ = _kind(spec)
        if kind == "choice":
            values[key] = json.loads(value)
        elif kind == "int":
            values[key] = int(value)
        else:
            values[key] = float(value)
    return values


def with_values(params: Params | dict[str, Any], model_type: str, values: dict[str, Any]) -> Params:
    """A validated copy of ``params`` whose ``model.<model_type>`` has ``values`` (and
    ``model.type`` = it); a value the schema refuses raises ParamsError naming its dotted key."""
    changes = {"model.type": model_type, **{f"model.{model_type}.{key}": value for key, value in values.items()}}
    return override(typed(Params, params), changes)


def check_space(params: Params | dict[str, Any], model_type: str) -> Space:
    """``tune.space.<model_type>``, refused before any trial runs when a value it can draw would
    not validate as ``model.<model_type>.<key>`` (e.g. a uniform draw for an integer key)."""
    params = typed(Params, params)
    spaces = params.tune.space
    if model_type not in spaces or not spaces[model_type]:
        raise ParamsError(f"tune.space.{model_type}: no search space for {model_type}; add one "
                          f"(spaces exist for {', '.join(spaces) or 'no type'})")
    space = spaces[model_type]
    for key, spec in space.items():
        kind, bounds = _kind(spec)
        if kind == "choice":
            probes = list(bounds)
        elif kind == "loguniform":
            probes = [bounds[0], bounds[1], math.sqrt(bounds[0] * bounds[1])]
        elif kind == "uniform":
            probes = [bounds[0], bounds[1], (bounds[0] + bounds[1]) / 2 + 1e-3 * (bounds[1] - bounds[0])]
        else:
            probes = list(bounds)
        for probe in probes:
            try:
                with_values(params, model_type, {key: probe})
            except ParamsError as exc:
                raise ParamsError(f"tune.space.{model_type}.{key}: {kind} can draw {probe!r}, which "
                                  f"model.{model_type}.{key} does not accept ({exc})") from None
    return space


def current_point(params: Params | dict[str, Any], model_type: str,
                  space: Space | dict[str, Any]) -> dict[str, Any] | None:
    """The params.yaml values of the searched keys as a point of the space (None if one is outside)."""
    block = typed(Params, params).model.of(model_type)
    point = {}
    for key, spec in typed_space(space, model_type).items():
        kind, bounds = _kind(spec)
        value = getattr(block, key)
        if kind == "choice":
            matches = [_encode(v) for v in bounds if v == value and type(v) is type(value)]
            if not matches:
                return _outside(model_type, key, value, spec)
            point[key] = matches[0]
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not bounds[0] <= value <= bounds[1]:
            return _outside(model_type, key, value, spec)
        else:  # the point in the distribution's own type (a real range may hold an integer value)
            point[key] = int(value) if kind == "int" else float(value)
    return point


def _outside(model_type: str, key: str, value: Any, spec: Section) -> None:
    log.warning("tune.include_current: model.%s.%s = %r is outside its space %s; no trial of the current values",
                model_type, key, value, spec.as_dict())
    return None


# ---- one trial (runs on a Ray worker) -----------------------------------------------------------
def run_trial(config: dict[str, Any], *, data: LabelledData, folds: pd.DataFrame, params: Params | dict[str, Any],
              model_type: str, space: Space | dict[str, Any], cpus: int) -> None:
    """Cross-validate one configuration, reporting the running fold means after every fold."""
    tensorflow_threads(model_type, cpus)  # the trial's share of the cores, not the machine's
    trial_params = with_values(params, model_type, decode(config, space))
    untracked = TrainingRun(None, data.clips, {}, trial_params.train.target)
    done: list[dict[str, float]] = []
    for fold in sorted(folds["fold"].unique()):
        result = fit_fold(data, folds, fold, model_type, trial_params, untracked)
        done.append(result.score)
        report = {f"fold_{name}": value for name, value in result.score.items()}
        for name, spread in mean_std(done).items():
            report.update({f"cv_{name}_mean": spread["mean"], f"cv_{name}_std": spread["std"]})
        report.update(fold=int(fold), folds_done=len(done))
        if result.best_epoch is not None:
            report["best_epoch"] = int(result.best_epoch)
        ray_tune.report(report)


# ---- what the driver records ----------------------------------------------------------------------
@dataclass
class TrialRecord:
    index: int                       # order in which Tune created the trial
    values: dict[str, Any]
    folds: list[dict[str, float]] = field(default_factory=list)
    status: str = "running"          # running | completed | stopped (ASHA) | failed
    seconds: float = 0.0             # the trial's own time (Tune's time_total_s)
    run_id: str | None = None

    def mean(self, metric: str) -> float:
        return float(np.mean([f[metric] for f in self.folds])) if self.folds else float("nan")

    def std(self, metric: str) -> float:
        return float(np.std([f[metric] for f in self.folds])) if self.folds else float("nan")


@dataclass
class SearchTracking:
    """Where and how the search is recorded in MLflow (built by the entry point)."""

    uri: str
    logged_params: dict[str, Any] | Section  # the parent run's params: the whole params.yaml in ``ser tune``
    tags: dict[str, str] = field(default_factory=dict)


class Recorder(ray_tune.Callback):
    """Driver side of the trials: their records, the MLflow runs and the progress bar."""

    def __init__(self, model_type: str, space: Space | dict[str, Any], n_folds: int, num_samples: int,
                 metric: str, client=None, parent_run_id: str | None = None, experiment_id: str | None = None,
                 progress: bool = True):
        from tqdm.auto import tqdm

        self.model_type, self.space, self.n_folds, self.metric = model_type, typed_space(space, model_type), n_folds, metric
        self.client, self.parent_run_id, self.experiment_id = client, parent_run_id, experiment_id
        self.records: dict[str, TrialRecord] = {}
        self.bar = tqdm(total=num_samples * n_folds, desc=f"tune {model_type}", unit="fold", disable=not progress,
                        leave=False)

    def on_trial_start(self, iteration, trials, trial, **info):
        values = decode(trial.config, self.space)
        record = self.records[trial.trial_id] = TrialRecord(trials.index(trial), values)
        if self.client is not None:
            params = {f"model.{self.model_type}.{k}": v for k, v in values.items()}
            tags = {"mlflow.parentRunId": self.parent_run_id, "trial_index": str(record.index),
                    "ray_trial_id": trial.trial_id, "model_type": self.model_type, "kind": "tune-trial"}
            run = retry(lambda: self.client.create_run(self.experiment_id, run_name=f"trial-{record.index:02d}",
                                                       tags=tags))
            record.run_id = run.info.run_id
            retry(lambda: self.client.log_batch(record.run_id, params=_mlflow_params(
                {"model.type": self.model_type, **flatten(params)})))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        record = self.records[trial.trial_id]
        fold_score = {name: float(result[f"fold_{name}"]) for name in METRICS}
        record.folds.append(fold_score)
        self.bar.update(1)
        if self.client is not None:
            from mlflow.entities import Metric

            now, step = int(time.time() * 1000), int(result["folds_done"])
            metrics = [Metric(f"fold_{name}", value, now, step) for name, value in fold_score.items()]
            retry(lambda: self.client.log_batch(record.run_id, metrics=metrics))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "completed" if len(self.records[trial.trial_id].folds) == self.n_folds else "stopped")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "failed")

    def _finish(self, trial, status: str) -> None:
        record = self.records[trial.trial_id]
        record.status = status
        record.seconds = round(float((trial.last_result or {}).get("time_total_s") or 0.0), 1)
        self.bar.update(self.n_folds - len(record.folds))  # folds a stopped or failed trial will not run
        best = best_record(list(self.records.values()), self.metric, self.n_folds)
        if best is not None:
            self.bar.set_postfix_str(f"best {self.metric} {best.mean(self.metric):.4f} (trial {best.index})")
        if self.client is None or record.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric("folds_done", len(record.folds), now, 0), Metric("seconds", record.seconds, now, 0)]
        if record.folds:
            for name, spread in mean_std(record.folds).items():
                metrics += [Metric(f"cv_{name}_mean", spread["mean"], now, 0),
                            Metric(f"cv_{name}_std", spread["std"], now, 0)]
        run_id = record.run_id
        retry(lambda: self.client.log_batch(run_id, metrics=metrics))
        retry(lambda: self.client.set_tag(run_id, "status", status))
        retry(lambda: self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED"))

    def close(self) -> None:
        self.bar.close()


def _mlflow_params(params: dict[str, Any] | Section):
    from mlflow.entities import Param

    return [Param(key, value) for key, value in loggable_params(params).items()]


def best_record(records: list[TrialRecord], metric: str, n_folds: int) -> TrialRecord | None:
    """The trial with the highest fold mean among those that ran every fold; ties go to the earlier trial."""
    complete = [r for r in records if r.status == "completed" and len(r.folds) == n_folds]
    if not complete:
        return None
    return max(sorted(complete, key=lambda r: r.index), key=lambda r: r.mean(metric))


# ---- the best trial as params for dvc exp run ----------------------------------------------------
def best_fragment(model_type: str, values: dict[str, Any]) -> dict[str, Any]:
    """The params.yaml fragment of a trial: merged into params.yaml, it trains that trial's model."""
    return {"model": {"type": model_type, model_type: dict(values)}}


_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_.+\-]*")
_RESERVED = {"null", "true", "false", "inf", "nan", "none"}


def override_value(value: Any) -> str:
    """A value in the override syntax of ``dvc exp run -S`` (Hydra's), with no spaces, so the
    lines survive ``$(cat file)`` word splitting."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} cannot be written as a param")
        return repr(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        if any(c.isspace() for c in value) or "'" in value:
            raise ValueError(f"{value!r}: a string with spaces or quotes cannot be passed through $(cat ...)")
        return f"'{value}'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"{value!r}: no override syntax for {type(value).__name__}")


def set_param_args(fragment: dict[str, Any]) -> list[str]:
    """``-S dotted.key=value`` for every leaf of a params fragment (``dvc exp run`` / ``--queue``)."""
    def leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return [f"-S {key}={override_value(value)}" for key, value in leaves(fragment)]


def write_best(fragment: dict[str, Any], args: list[str], params_path: Path, args_path: Path, header: str) -> None:
    for path in (params_path, args_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    params_path.write_text(comments + yaml.safe_dump(fragment, sort_keys=False), encoding="utf-8")
    args_path.write_text("\n".join(args) + "\n", encoding="utf-8")


# ---- Ray ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    # Tune's newer console output prints its own boxes whatever the verbosity; the old one obeys verbose=0.
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


# ---- the search -----------------------------------------------------------------------------------
@dataclass
class SearchResult:
    model_type: str
    feature_input: str
    protocol: str
    n_folds: int
    metric: str
    trials: list[TrialRecord]
    best: TrialRecord
    fragment: dict[str, Any]
    args: list[str]
    parent_run_id: str | None
    where: str
    seconds: float


def search(metadata: pd.DataFrame, inputs: ModelInputs, augmented: ModelInputs | None,
           params: Params | dict[str, Any], *, ray_dir: str | os.PathLike, address: str | None = None,
           tracking: SearchTracking | None = None, progress: bool = True) -> SearchResult:
    """Run the search the ``tune`` section describes on the model ``tune.model_type`` (null:
    ``model.type``). ``params`` is the whole params file (:class:`ser.params.Params`, or its
    mapping; the search reads split, train, model and tune); ``ray_dir`` is where Tune keeps its
    trial logs and state; ``address`` a Ray cluster (None: a local Ray); ``tracking`` records
    the search in MLflow (None: not recorded)."""
    params = typed(Params, params)
    settings = params.tune
    model_type = settings.model_type or params.model.type
    space = check_space(params, model_type)
    params = with_values(params, model_type, {})
    model_params = params.model
    feature_input = resolve_feature_input(model_type, model_params.features, model_params.of(model_type))
    data, folds = folded_data(metadata, inputs, augmented, params, feature_input)
    n_folds, metric = int(folds["fold"].nunique()), settings.metric
    protocol = params.split.protocol
    current = current_point(params, model_type, space) if settings.include_current else None

    client = parent_run_id = experiment_id = None
    if tracking is not None:
        from mlflow import MlflowClient

        experiment_id = use_experiment(tracking.uri, settings.experiment)
        client = MlflowClient(tracking_uri=tracking.uri)
        tags = run_tags(data.clips, {**tracking.tags, "kind": "tune", "model_type": model_type,
                                     "feature_input": feature_input, "protocol": protocol,
                                     "speaker_dependent": protocol == "random", "n_folds": n_folds})
        parent = retry(lambda: client.create_run(experiment_id, run_name=f"tune-{model_type}", tags=tags))
        parent_run_id = parent.info.run_id
        retry(lambda: client.log_batch(parent_run_id, params=_mlflow_params(tracking.logged_params)))

    started = time.time()
    recorder = Recorder(model_type, space, n_folds, settings.num_samples, metric, client, parent_run_id,
                        experiment_id, progress)
    outcome = "FAILED"
    try:
        with ray_session(address, settings.num_cpus, ship_code=True, quiet=True) as where:
            _fit(data, folds, params, model_type, space, settings, current, n_folds, recorder, Path(ray_dir))
        trials = sorted(recorder.records.values(), key=lambda r: r.index)
        best = best_record(trials, metric, n_folds)
        if best is None:
            raise RuntimeError(f"no trial of {model_type} ran all {n_folds} folds "
                               f"({', '.join(r.status for r in trials) or 'no trials'}); see {ray_dir}")
        fragment = best_fragment(model_type, best.values)
        args = set_param_args(fragment)
        if client is not None:
            summary = {f"best_cv_{name}_mean": best.mean(name) for name in METRICS}
            summary.update({f"best_cv_{metric}_std": best.std(metric), "trials": len(trials),
                            "trials_completed": sum(r.status == "completed" for r in trials),
                            "seconds": round(time.time() - started, 1)})
            retry(lambda: client.log_batch(parent_run_id, metrics=_metrics(summary)))
            for key, value in {"best_trial": str(best.index), "best_run_id": str(best.run_id),
                               "best_args": " ".join(args)}.items():
                retry(lambda: client.set_tag(parent_run_id, key, value))
            client.log_dict(parent_run_id, fragment, "tune_best.yaml")
        outcome = "FINISHED"
    finally:
        recorder.close()
        if client is not None:
            retry(lambda: client.set_terminated(parent_run_id, outcome))
    return SearchResult(model_type, feature_input, protocol, n_folds, metric, trials, best, fragment, args,
                        parent_run_id, where, round(time.time() - started, 1))


def _metrics(values: dict[str, float]):
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, 0) for key, value in values.items()]


def _fit(data: LabelledData, folds: pd.DataFrame, params: Params, model_type: str, space: Space,
         settings: TuneParams, current: dict[str, Any] | None, n_folds: int, recorder: Recorder,
         ray_dir: Path) -> None:
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    reported = f"cv_{settings.metric}_mean"
    sampler = optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=settings.startup_trials)
    searcher = OptunaSearch(optuna_space(space), metric=reported, mode="max", sampler=sampler,
                            points_to_evaluate=[current] if current else None)
    if settings.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=reported, mode="max", max_t=n_folds,
                                  grace_period=settings.asha.grace_period,
                                  reduction_factor=settings.asha.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    cpus = settings.cpus_per_trial
    trainable = ray_tune.with_resources(
        ray_tune.with_parameters(run_trial, data=data, folds=folds, params=params, model_type=model_type,
                                 space=space, cpus=cpus), {"cpu": cpus})
    ray_dir.mkdir(parents=True, exist_ok=True)
    tuner = ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=settings.num_samples,
                                        max_concurrent_trials=settings.max_concurrent),
        run_config=ray_tune.RunConfig(name=f"{model_type}-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(ray_dir.resolve()), callbacks=[recorder], verbose=0,
                                      failure_config=ray_tune.FailureConfig(max_failures=0)))
    with _quiet_tune():
        tuner.fit()


# ---- the table --------------------------------------------------------------------------------------
def trials_table(result: SearchResult):
    """A rich table of every trial, in order, the best marked."""
    from rich.table import Table

    table = Table(title=f"{result.model_type} on {result.feature_input}: fold means over {result.n_folds} "
                        f"{result.protocol} folds, {result.where}", title_justify="left")
    keys = list(result.best.values)
    table.add_column("trial", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    for name in METRICS:
        table.add_column(name, justify="right")
        if name == result.metric:
            table.add_column("± std", justify="right")
    for name in ("folds", "s"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for record in result.trials:
        scores = []
        for name in METRICS:
            scores.append(f"{record.mean(name):.4f}" if record.folds else "-")
            if name == result.metric:
                scores.append(f"{record.std(name):.4f}" if record.folds else "-")
        best = record is result.best
        table.add_row(f"{record.index}{' *' if best else ''}", *(_short(record.values[k]) for k in keys), *scores,
                      f"{len(record.folds)}/{result.n_folds}", f"{record.seconds:.1f}", record.status,
                      style="bold" if best else None)
    return table


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, list) else str(value)
