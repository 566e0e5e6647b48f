"""The ``ser`` command: ``ser predict PATH...``, ``ser serve``, ``ser promote`` and ``ser tune``.

    ser predict clip.wav recordings/ [--model URI|FOLDER] [--format table|json|csv] [--timeline]
    ser serve --port 8000 [--model URI|FOLDER] [--workers N] [--max-queue N] [--timeout-s S] [--max-streams N]
    ser promote VERSION
    ser tune [--model-type T] [--num-samples N] [--max-concurrent N] [--address HOST:PORT]

``--model`` defaults to the version of the registered model (``mlflow.registered_model`` in
params.yaml) that the ``champion`` alias names in the project's MLflow store
(``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo root>/mlflow.db``). ``dvc repro`` of the
committed params moves the alias to the model it registers; experiments never do; ``ser
promote VERSION`` moves it by hand. ``--model`` also takes
any MLflow model URI, a local MLflow model folder, or a ModelBundle folder. A file that cannot
be read gets one error line (exit status 1); the other files are still predicted.

``ser tune`` searches ``model.<type>`` hyper-parameters (params.yaml ``tune``) on the train
stage's inputs and folds, on the Ray cluster ``--address`` or ``RAY_ADDRESS`` names (else a
local Ray), logs the trials to MLflow and writes the best as ``tune.best_params`` (a params
fragment) and ``tune.best_args`` (``dvc exp run $(cat metrics/tune_best.args)`` applies it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ser.params import Params

# What the train stage reads (dvc.yaml), relative to the repository root.
TRAIN_INPUTS = {"metadata": "data/interim/metadata.parquet", "features": "data/features", "augmented": "data/augmented"}
MODEL_HELP = ("MLflow model URI (models:/ser-emotion/3, runs:/<run id>/audio_model), MLflow model folder or "
              "ModelBundle folder; default: the @champion version of the registered model in the project's MLflow store")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition: predict, serve and tune.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="predict the emotion of audio files and folders")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="audio files, or folders searched recursively")
    predict.add_argument("--model", default=None, help=MODEL_HELP)
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--windows", action="store_true",
                         help="table/csv: also print each window of long recordings")
    predict.add_argument("--timeline", action="store_true",
                         help="each recording's speech segments, each with its emotion, start and end "
                              "(segmentation: predict.segments)")
    predict.add_argument("--window-s", type=float, default=None, help="window length (default: predict.window_s)")
    predict.add_argument("--hop-s", type=float, default=None, help="window hop (default: predict.hop_s)")
    predict.add_argument("--min-confidence", type=float, default=None, metavar="P",
                         help="answer 'uncertain' (probabilities still shown) when the top probability is under P "
                              "(default: predict.min_confidence; 0 = always answer)")
    predict.add_argument("--normalize-by", choices=("folder",), default=None,
                         help="for a model trained with train.speaker_norm: speaker (transductive): standardize "
                              "each folder's recordings together, one speaker per folder")

    promote = commands.add_parser("promote", help="make a registered version the default model (@champion)")
    promote.add_argument("version", help="the version of the registered model (mlflow.registered_model)")
    promote.add_argument("--alias", default=None, help="another alias than champion")

    serve = commands.add_parser("serve", help="run the web page and JSON API")
    serve.add_argument("--model", default=None, help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-bytes", type=int, default=None, help="upload size limit (default: serve.max_bytes)")
    serve.add_argument("--workers", type=int, default=None,
                       help="predictor processes, one core each; 0 = every core (default: serve.workers)")
    serve.add_argument("--max-queue", type=int, default=None,
                       help="requests waiting or running at once; more get 503 (default: serve.max_queue)")
    serve.add_argument("--timeout-s", type=float, default=None,
                       help="seconds a request may wait and run (default: serve.timeout_s)")
    serve.add_argument("--max-streams", type=int, default=None,
                       help="live microphone streams at once; 0 = none (default: serve.max_streams)")
    serve.add_argument("--stream-max-s", type=float, default=None,
                       help="seconds a live stream may last (default: serve.stream_max_s)")
    serve.add_argument("--stream-idle-s", type=float, default=None,
                       help="seconds without audio before a live stream is closed (default: serve.stream_idle_s)")

    search = commands.add_parser("tune", help="search hyper-parameters on Ray Tune (params.yaml tune)")
    search.add_argument("--model-type", default=None, help="the family to search (default: tune.model_type, else "
                                                           "model.type)")
    search.add_argument("--num-samples", type=int, default=None, help="trials (default: tune.num_samples)")
    search.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: tune.max_concurrent)")
    search.add_argument("--address", default=None,
                        help="a running Ray cluster, host:port of its head (default: $RAY_ADDRESS, else a local Ray)")
    search.add_argument("--metadata", default=TRAIN_INPUTS["metadata"], help="default: %(default)s (the train stage's)")
    search.add_argument("--features", default=TRAIN_INPUTS["features"], help="default: %(default)s")
    search.add_argument("--augmented", default=TRAIN_INPUTS["augmented"], help="default: %(default)s")
    return parser


def _load(model: str | None, params: Params, window_s: float | None = None, hop_s: float | None = None,
          min_confidence: float | None = None):
    from pathlib import Path

    from ser import project
    from ser.serving.loader import load_predictor  # not ser.serving.pyfunc: that imports mlflow.pyfunc

    predict = params.predict
    local = model is not None and Path(model).is_dir()
    # a model from the registry: a tracking server that is down is one line (a ValueError), not minutes of retries
    uri = project.tracking_uri() if local else project.checked_tracking_uri()
    predictor, description = load_predictor(model, tracking_uri=uri,
                                            registered_model=params.mlflow.registered_model,
                                            predict_params=predict)
    # Windowing is a setting of this run (params or flags), never frozen into the model it loads.
    predictor.window_s = predict.window_s if window_s is None else window_s
    predictor.hop_s = predict.hop_s if hop_s is None else hop_s
    threshold = predict.min_confidence if min_confidence is None else min_confidence
    predictor.min_confidence = threshold or None
    predictor.segments = predict.segments
    predictor.use_threads(os.cpu_count() or 1)  # one process, one file at a time: every core for the encoder
    return predictor, description


def _project_params() -> Params:
    """The project's params.yaml, validated (predict, serve, mlflow and tune sections are read)."""
    from ser import project

    path = project.params_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no params.yaml here or above; run ser inside the project checkout")
    return project.load_params(path)


def _percent(value: float) -> str:
    return f"{100 * value:5.1f}%"


def write_table(predictions, classes: Sequence[str], windows: bool, out) -> None:
    width = max([len("path"), *(len(p.source) for p in predictions)])
    label_width = max(len("label"), *(len(c) for c in classes))
    header = f"{'path':<{width}}  {'label':<{label_width}}  " + "  ".join(f"{c:>7}" for c in classes)
    print(header, file=out)
    for prediction in predictions:
        if not prediction.ok:
            print(f"{prediction.source:<{width}}  ERROR: {prediction.error}", file=out)
            continue
        cells = "  ".join(f"{_percent(prediction.probabilities[c]):>{max(7, len(c))}}" for c in classes)
        print(f"{prediction.source:<{width}}  {prediction.label:<{label_width}}  {cells}", file=out)
        if windows and len(prediction.windows) > 1:
            for window in prediction.windows:
                span = f"  [{window.start_s:8.2f}-{window.end_s:8.2f} s]"
                cells = "  ".join(f"{_percent(window.probabilities[c]):>{max(7, len(c))}}" for c in classes)
                print(f"{span:<{width}}  {window.label:<{label_width}}  {cells}", file=out)


def write_csv(predictions, classes: Sequence[str], windows: bool, out) -> None:
    writer = csv.writer(out)
    writer.writerow(["path", "window", "start_s", "end_s", "label", *classes, "error"])
    for prediction in predictions:
        if not prediction.ok:
            writer.writerow([prediction.source, "", "", "", "", *([""] * len(classes)), prediction.error])
            continue
        writer.writerow([prediction.source, "all", 0.0, prediction.duration_s, prediction.label,
                         *(f"{prediction.probabilities[c]:.6f}" for c in classes), ""])
        if windows and len(prediction.windows) > 1:
            for index, window in enumerate(prediction.windows):
                writer.writerow([prediction.source, index, window.start_s, window.end_s, window.label,
                                 *(f"{window.probabilities[c]:.6f}" for c in classes), ""])


def write_timeline_table(results, classes: Sequence[str], out) -> None:
    label_width = max(len("label"), *(len(c) for c in classes))
    for result in results:
        if not result.ok:
            print(f"{result.source}  ERROR: {result.error}", file=out)
            continue
        timeline = result.timeline
        count = len(timeline.segments)
        print(f"{result.source}  ({timeline.duration_s:.2f} s, {count} speech segment{'' if count == 1 else 's'})",
              file=out)
        if timeline.segments:
            print(f"  {'start_s':>8}  {'end_s':>8}  {'label':<{label_width}}  "
                  + "  ".join(f"{c:>7}" for c in classes), file=out)
        for segment in timeline.segments:
            cells = "  ".join(f"{_percent(segment.probabilities[c]):>{max(7, len(c))}}" for c in classes)
            print(f"  {segment.start_s:8.2f}  {segment.end_s:8.2f}  {segment.label:<{label_width}}  {cells}", file=out)


def write_timeline_csv(results, classes: Sequence[str], out) -> None:
    writer = csv.writer(out)
    writer.writerow(["path", "segment", "start_s", "end_s", "label", "confidence", *classes, "error"])
    for result in results:
        if not result.ok:
            writer.writerow([result.source, "", "", "", "", "", *([""] * len(classes)), result.error])
            continue
        for index, segment in enumerate(result.timeline.segments):
            writer.writerow([result.source, index, segment.start_s, segment.end_s, segment.label,
                             f"{segment.confidence:.6f}", *(f"{segment.probabilities[c]:.6f}" for c in classes), ""])


def _summarize(answered: int, failed: Sequence[tuple[str, str]]) -> None:
    """The run's last line on stderr: how many files were answered and why the others were not.
    One file answered needs no summary: its answer is all there is (stderr stays empty)."""
    if answered + len(failed) < 2 and not failed:
        return
    line = f"ser predict: {answered} file{'s' if answered != 1 else ''} answered, {len(failed)} failed"
    print(line + (": " + "; ".join(error for _, error in failed) if failed else ""), file=sys.stderr)


def _run_timeline(predictor, args: argparse.Namespace) -> int:
    from ser.serving.timeline import timeline_paths

    results = timeline_paths(predictor, args.paths, predictor.segments, progress=True)
    if not results:
        print("ser predict: no audio files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    classes = predictor.classes
    if args.format == "json":
        json.dump([r.timeline.to_dict() if r.ok else {"path": r.source, "error": r.error} for r in results],
                  sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        write_timeline_csv(results, classes, sys.stdout)
    else:
        write_timeline_table(results, classes, sys.stdout)
    sys.stdout.flush()
    failed = [(r.source, r.error) for r in results if not r.ok]
    _summarize(len(results) - len(failed), failed)
    return 1 if failed else 0


def run_predict(args: argparse.Namespace) -> int:
    try:
        predictor, _ = _load(args.model, _project_params(), args.window_s, args.hop_s, args.min_confidence)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ser predict: {exc}", file=sys.stderr)
        return 2
    if args.timeline:
        if args.normalize_by is not None:
            print("ser predict: --timeline scores each recording alone; it cannot be combined with --normalize-by",
                  file=sys.stderr)
            return 2
        if args.windows:
            print("ser predict: --timeline answers per speech segment; it cannot be combined with --windows "
                  "(--format json gives each segment's windows)", file=sys.stderr)
            return 2
        return _run_timeline(predictor, args)
    try:
        # Progress on stderr (files, and windows of a long one), so stdout stays the answer alone.
        predictions = predictor.predict_paths(args.paths, progress=True, normalize_by=args.normalize_by)
    except ValueError as exc:
        print(f"ser predict: {exc}", file=sys.stderr)
        return 2
    if not predictions:
        print("ser predict: no audio files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    classes = predictor.classes
    if args.format == "json":
        json.dump([p.to_dict(with_windows=True) for p in predictions], sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        write_csv(predictions, classes, args.windows, sys.stdout)
    else:
        write_table(predictions, classes, args.windows, sys.stdout)
    sys.stdout.flush()
    failed = [(p.source, p.error) for p in predictions if not p.ok]
    _summarize(len(predictions) - len(failed), failed)
    return 1 if failed else 0


def run_serve(args: argparse.Namespace) -> int:
    from ser.params import override
    from ser.serving.server import run_server
    from ser.serving.workers import WorkerError

    try:
        params = _project_params()
        flags = {"max_bytes": args.max_bytes, "workers": args.workers, "max_queue": args.max_queue,
                 "timeout_s": args.timeout_s, "max_streams": args.max_streams, "stream_max_s": args.stream_max_s,
                 "stream_idle_s": args.stream_idle_s}
        settings = override(params.serve, {key: value for key, value in flags.items() if value is not None})
        predictor, description = _load(args.model, params)
    except (ValueError, FileNotFoundError) as exc:  # ParamsError is a ValueError
        print(f"ser serve: {exc}", file=sys.stderr)
        return 2
    model_info = None
    if args.model is None or str(args.model).startswith("models:/"):
        from ser import project
        from ser.serving import loader

        uri = args.model or f"models:/{params.mlflow.registered_model}@{loader.CHAMPION}"
        try:
            model_info = loader.model_version_info(project.tracking_uri(), uri)
        except Exception as exc:  # the version is shown, not needed: serve without it
            print(f"ser serve: no version details for {uri}: {exc}", file=sys.stderr)
    try:
        run_server(predictor, settings, host=args.host, port=args.port, model_description=description,
                   model_info=model_info)
    except (ValueError, WorkerError) as exc:
        print(f"ser serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is how a foreground server is stopped, not a crash
        return 130
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from ser import project
    from ser.serving import loader
    from ser.training import tracking

    try:
        params = _project_params()
        name, uri = params.mlflow.registered_model, project.checked_tracking_uri()
        alias = args.alias or loader.CHAMPION
        tracking.promote(uri, name, args.version, alias)
        info = loader.model_version_info(uri, f"models:/{name}@{alias}")
    except Exception as exc:  # mlflow raises its own types for a missing model or version
        print(f"ser promote: {exc}", file=sys.stderr)
        return 2
    print(f"{name} version {info['version']} (run {info['run_id']}) is now @{alias}; metrics {info['metrics']}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import pandas as pd

    from ser import project
    from ser.params import ParamsError, override, validate

    try:
        params = _project_params()
        flags = {"model_type": args.model_type, "num_samples": args.num_samples, "max_concurrent": args.max_concurrent}
        changed = {key: value for key, value in flags.items() if value is not None}
        # Validated again as a whole, so an error names the file and the key the option set.
        params = validate({**params.as_dict(), "tune": {**params.tune.as_dict(), **changed}},
                          "params.yaml with the ser tune options")
    except (ParamsError, FileNotFoundError) as exc:
        print(f"ser tune: {exc}", file=sys.stderr)
        return 2
    try:
        uri = project.checked_tracking_uri()
    except project.TrackingUnavailable as exc:
        print(f"ser tune: {exc}", file=sys.stderr)
        return 2
    root = project.repo_root()
    inputs = {name: root / getattr(args, name) for name in TRAIN_INPUTS}
    missing = [str(path) for name, path in inputs.items() if name != "augmented" and not path.exists()]
    if missing:
        print(f"ser tune: {', '.join(missing)} missing; run `dvc repro features augment` first", file=sys.stderr)
        return 2

    from ser.training.train import load_training_inputs
    from ser.training.tune import SearchTracking, search, trials_table, write_best

    settings = params.tune
    model_type = settings.model_type or params.model.type
    try:
        searched = override(params.model, {"type": model_type})
        _, features, augmented = load_training_inputs(inputs["features"], inputs["augmented"], searched, params.train)
        result = search(pd.read_parquet(inputs["metadata"]), features, augmented, params,
                        ray_dir=root / settings.ray_dir, address=args.address or os.environ.get("RAY_ADDRESS"),
                        tracking=SearchTracking(uri, params, project.experiment_tags()))
    except (ParamsError, ValueError) as exc:
        print(f"ser tune: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # no trial finished: each failure's traceback is above
        print(f"ser tune: {exc}", file=sys.stderr)
        return 1
    from rich.console import Console

    # Off a terminal rich would wrap the table at 80 columns; a log has room for the whole row.
    Console(width=None if sys.stdout.isatty() else 200).print(trials_table(result))
    best, metric = result.best, result.metric
    paths = [Path(settings.best_params), Path(settings.best_args)]
    header = (f"ser tune: the best of {len(result.trials)} trials of {model_type} on {result.feature_input} (trial "
              f"{best.index}): {metric} {best.mean(metric):.4f} +- {best.std(metric):.4f} over {result.n_folds} "
              f"{result.protocol} folds\nMLflow: experiment {settings.experiment}, parent run "
              f"{result.parent_run_id}\nApply: dvc exp run $(cat {paths[1].as_posix()})")
    write_best(result.fragment, result.args, *(path if path.is_absolute() else root / path for path in paths), header)
    print(f"best: trial {best.index}, {metric} {best.mean(metric):.4f} +- {best.std(metric):.4f} "
          f"({result.seconds:.0f} s, MLflow parent run {result.parent_run_id})")
    print(f"wrote {paths[0].as_posix()} and {paths[1].as_posix()}; apply with:")
    print(f"  dvc exp run {' '.join(result.args)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Library deprecation notices are for developers, not for someone asking about a recording.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = build_parser().parse_args(argv)
    if args.command == "predict":
        return run_predict(args)
    if args.command == "promote":
        return run_promote(args)
    if args.command == "tune":
        return run_tune(args)
    return run_serve(args)


if __name__ == "__main__":
    sys.exit(main())
