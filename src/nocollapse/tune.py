"""Recipe tuning with Optuna: the settings that mattered in docs/recipe.md, searched on a short budget, each trial a run.

``tune(preset, out, trials=N, budget_epochs=E)`` runs trials of ``preset`` for ``E`` epochs. Each trial is an
ordinary run directory ``OUT/trial<NNN>``. A trial reports its monitor's figure after every epoch, and the median
pruner stops it when it falls below the median of the earlier trials at that epoch. The objective is the final
kNN top-1 on labelled data. Without labels it is RankMe of the encoder's features (Garrido et al. 2023, a
label-free criterion for choosing hyperparameters). The best trial's settings are written as ``OUT/best.toml``
for ``nocollapse train --config``.

The space is declared once, in :func:`default_space`, from the preset's own values (ranges around its learning
rate and regularizer weights); ``--space`` entries change it. The study lives in an Optuna storage, by default
the SQLite file ``OUT/study.db``. Any database URL Optuna accepts (``postgresql://...``, ``mysql://...``) lets
processes on many machines work on one study; ``trials`` counts the study's finished trials, whoever ran them.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nocollapse.config import RULES, Config, get_value, key_arity, key_item_type, key_type, resolve_config, set_value, split_overrides
from nocollapse.errors import CollapseError, NonFiniteStep, TrainingStopped, UserError
from nocollapse.methods import REGULARIZERS
from nocollapse.rules import first_violation

if TYPE_CHECKING:
    import optuna

INSTALL_HINT = "pip install 'nocollapse[tune]'"
BEST_FILE = "best.toml"
OBJECTIVES = ("auto", "knn", "rankme")
# What fails one trial and not the study: settings the data refuses (a batch above the images), a collapse, a non-finite step.
FAILURES = (UserError, CollapseError, NonFiniteStep)
MAX_FAILURES_IN_A_ROW = 3  # failed trials in a row (a bad region of the space, a broken set-up) before the study stops


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a range (``low``..``high``, log-uniform when ``log``) or a list of ``choices``.

    A range on a two-number key (``augment.crop_scale``) searches its first number and keeps the second."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this setting (for a pair's range, its first number)."""
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if key_item_type(self.key) is int:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def override(self, value: Any, base: Config) -> str:
        """``KEY=VALUE`` of a value :meth:`suggest` gave; a pair's second number is ``base``'s."""
        if key_arity(self.key) == 2 and not self.choices:
            return f"{self.key}={value},{get_value(base, self.key)[1]}"
        return f"{self.key}={value}"

    def describe(self) -> str:
        if self.choices:
            return f"{self.key} ∈ {{{', '.join(self.choices)}}}"
        first = " (its first number)" if key_arity(self.key) == 2 else ""
        return f"{self.key}{first} ∈ [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


def default_space(config: Config) -> list[Dimension]:
    """What docs/recipe.md found to matter, around the preset's own values: the learning rate (÷4 to ×4, log), the
    EMA τ_base (0.8–0.996) where the method has a target, the crops' smallest scale (0.08–0.9), the batch size (half,
    the preset's, double) and each regularizer the preset uses (÷10 to ×10 of its weight, log)."""
    optim, method = config.optim, config.method
    space = [Dimension("optim.lr", optim.lr / 4, optim.lr * 4, log=True)]
    if method.name in ("byol", "msbreg"):
        space.append(Dimension("method.byol.ema_base", 0.8, 0.996))
    space.append(Dimension("augment.crop_scale", 0.08, 0.9))
    batches = sorted({optim.batch_size // 2, optim.batch_size, optim.batch_size * 2})
    if method.name == "wmse":  # sub-batches of w_size must divide the batch
        batches = [b for b in batches if b % method.wmse.w_size == 0]
    batches = [b for b in batches if b >= 16]
    if len(batches) > 1:
        space.append(Dimension("optim.batch_size", choices=tuple(map(str, batches))))
    for name in REGULARIZERS:
        weight = getattr(config.regularizers, name)
        if weight > 0:
            space.append(Dimension(f"regularizers.{name}", weight / 10, weight * 10, log=True))
    return space


def parse_space(entries: Sequence[str], base: list[Dimension]) -> list[Dimension]:
    """``base`` changed by ``KEY=LOW:HIGH[:log]`` (a range), ``KEY=A|B|C`` (choices) or ``KEY=off`` (not searched)."""
    space = {dimension.key: dimension for dimension in base}
    for key, text in split_overrides(list(entries)):
        key_type(key)  # an unknown key: UserError with the close matches
        if text == "off":
            if key not in space:
                raise UserError(f"--space {key}=off: {key} is not searched (the space: {', '.join(space)})")
            del space[key]
            continue
        if "|" in text:
            choices = tuple(choice.strip() for choice in text.split("|"))
            for choice in choices:  # each must be a valid value of the key
                config = Config()
                set_value(config, key, choice)
                if violation := first_violation({key: get_value(config, key)}, RULES, prefix="--space "):
                    raise UserError(violation)
            space[key] = Dimension(key, choices=choices)
            continue
        parts = text.split(":")
        try:
            low, high = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise UserError(f"--space {key}={text!r}: must be LOW:HIGH[:log] (a range), A|B|C (choices) or off") from None
        log = len(parts) == 3 and parts[2] == "log"
        if len(parts) > 3 or (len(parts) == 3 and not log) or not (math.isfinite(low) and math.isfinite(high) and low < high) or (log and low <= 0):
            raise UserError(f"--space {key}={text!r}: must be LOW:HIGH[:log] with LOW < HIGH (and LOW > 0 for log)")
        if key_item_type(key) not in (int, float):
            raise UserError(f"--space {key}={text!r}: a range needs a numeric key; give choices A|B|C instead")
        space[key] = Dimension(key, low, high, log=log)
    if not space:
        raise UserError("--space leaves nothing to search")
    return list(space.values())


def _optuna() -> Any:
    try:
        import optuna
    except ModuleNotFoundError:
        raise UserError(f"tuning needs Optuna: {INSTALL_HINT}") from None
    return optuna


def monitor_value(record: dict[str, Any], objective: str) -> float | None:
    """The figure of a monitor line that the trial reports: its kNN top-1, or the features' RankMe."""
    if objective == "knn":
        return next((value for key, value in record.items() if key.startswith("knn_top1_k")), None)
    return record.get("geometry", {}).get("features", {}).get("rankme")


def final_value(evaluation: dict[str, Any], objective: str, k: int) -> float:
    """The objective of an evaluated trial: the trained encoder's kNN top-1 at ``k`` (the bank: the whole training set, or eval.train_samples of it),
    or its features' RankMe."""
    row = evaluation["rows"][-1]
    return row["knn"][str(k)] if objective == "knn" else row["geometry"]["rankme"]


def tune(preset: str | None, out: Path | str, *, trials: int, budget_epochs: int, overrides: Sequence[str] = (), space: Sequence[str] = (),
         storage: str | None = None, study_name: str | None = None, objective: str = "auto", seed: int = 0,
         config_file: str | Path | None = None, pruner: optuna.pruners.BasePruner | None = None,
         log: Callable[[str], object] = print) -> optuna.Study:
    """Run trials until the study holds ``trials`` finished ones (complete or pruned), write ``OUT/best.toml``, and
    return the study. ``preset`` None: the config file's, else fmnist. ``seed`` seeds this process's sampler: processes
    sharing a study should each take their own."""
    optuna = _optuna()
    if preset is None:
        from nocollapse.config_file import read_config_file

        preset = (read_config_file(config_file)[0] if config_file else None) or "fmnist"
    out = Path(out)
    if trials < 1 or budget_epochs < 1:
        raise UserError(f"--trials {trials} and --budget-epochs {budget_epochs}: both must be at least 1")
    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective!r}: must be one of {', '.join(OBJECTIVES)}")
    budget = [f"optim.epochs={budget_epochs}"]
    if _resolve(preset, list(overrides), config_file).optim.warmup_epochs >= budget_epochs:
        budget.append(f"optim.warmup_epochs={budget_epochs / 4:g}")  # the preset's warm-up would fill the short budget
    # Trials are scored by the objective alone: no baselines, no linear probe (either back with eval.*=true).
    fixed = [f"run.out_dir={out}", "eval.baselines=false", "eval.linear_probe=false", *overrides, *budget]
    base = _resolve(preset, fixed, config_file)
    given = {key for key, _ in split_overrides(list(overrides))}  # a setting fixed on the command line is not searched
    dimensions = parse_space(space, [dimension for dimension in default_space(base) if dimension.key not in given])
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this function says what happens, trial by trial, failures too
    backend = _open_storage(optuna, url)
    study = optuna.create_study(storage=backend, study_name=study_name or out.resolve().name, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3))
    chosen = _choose_objective(objective, base)
    if study.user_attrs.get("objective", chosen) != chosen:
        raise UserError(f"study {study.study_name} maximises {OBJECTIVE_NAMES[study.user_attrs['objective']]}, not {OBJECTIVE_NAMES[chosen]}; "
                        "tune with the same --objective and data, or start another --study")
    study.set_user_attr("objective", chosen)
    # Trial directories are named by the study's trial numbers: another study's in the same OUT would clash with them.
    prefix = "" if study.study_name == out.resolve().name else f"{study.study_name}-"
    if not study.trials and any(out.glob(f"{prefix}trial[0-9][0-9][0-9]*")):
        raise UserError(f"{out} holds trial directories of another study ({prefix}trial000, ...) but study {study.study_name} has no "
                        "trials: tune into another --out, or remove them")
    log(f"tune {study.study_name} ({url}): {preset} for {budget_epochs} epoch(s) a trial, until {trials} finished trial(s); "
        f"objective {OBJECTIVE_NAMES[chosen]}; searching " + "; ".join(d.describe() for d in dimensions))
    k = min(base.eval.knn_k)

    def run_trial(trial: optuna.Trial) -> float:
        from nocollapse.train.evaluation import evaluate_run
        from nocollapse.train.loop import Trainer

        name = f"{prefix}trial{trial.number:03d}"
        searched = [dimension.override(dimension.suggest(trial), base) for dimension in dimensions]

        def report(record: dict[str, Any]) -> None:
            value = monitor_value(record, chosen)
            if value is not None:
                trial.report(value, step=round(record["epoch"]))
                # Never at the last epoch: the trial has cost its whole budget by then, its evaluation is worth having.
                if round(record["epoch"]) < budget_epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {record['epoch']:g} at {value:.4g}")

        try:
            config = _resolve(preset, [*fixed, *searched, f"run.name={name}"], config_file)  # the searched values together may break a rule
            trial.set_user_attr("run_dir", str(out / name))
            trial.set_user_attr("config", config.to_dict())  # best.toml comes from it, whichever process and --space ran the trial
            trainer = Trainer(config, progress=False, log=lambda *_: None, on_monitor=report)
            run_dir = trainer.fit()
            rows = evaluate_run(run_dir, config, train_set=trainer.train_set, test_set=trainer.test_set, progress=False, log=lambda *_: None)
            value = final_value({"rows": [row.to_dict() for row in rows]}, chosen, k)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise UserError(f"its {OBJECTIVE_NAMES[chosen]} is {value}")
        except (optuna.TrialPruned, TrainingStopped):  # not failures of the trial's settings: a pruned trial, a stop signal
            raise
        except Exception as error:  # its line says why, without Optuna's traceback; FAILURES fail the trial, the rest the study
            trial.set_user_attr("failure", str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise
        return value

    def said(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        shown = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in trial.params.items())
        outcome = (f"{_shown(trial.value, chosen)}" if trial.state == optuna.trial.TrialState.COMPLETE else
                   f"failed: {trial.user_attrs.get('failure', 'see its run directory')}" if trial.state == optuna.trial.TrialState.FAIL
                   else trial.state.name.lower())
        best = _best(study)
        log(f"trial {trial.number}: {shown} → {outcome}" + (f"  (best: trial {best.number}, {_shown(best.value, chosen)})" if best else ""))

    from nocollapse.errors import RunsStopped

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = lambda: len(study.get_trials(deepcopy=False, states=states))  # noqa: E731
    failures_in_a_row = 0
    while finished() < trials and failures_in_a_row < MAX_FAILURES_IN_A_ROW:  # a failed trial does not count towards --trials
        before = finished()
        try:
            study.optimize(run_trial, n_trials=1, callbacks=[said], catch=FAILURES)
        except TrainingStopped as stop:
            raise RunsStopped(stop.signal_name, f"the trial in progress is marked failed; run the same `nocollapse tune ... --out {out}` "
                                                f"to go on (its finished trials are kept)") from None
        failures_in_a_row = 0 if finished() > before else failures_in_a_row + 1
    if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
        log(f"tune: {failures_in_a_row} trials in a row failed; stopping (their run directories under {out} hold their logs)")
    best = _best(study)
    if best is None:
        raise UserError(f"no trial of {study.study_name} finished; the trials' logs are in their run directories under {out}")
    from nocollapse.config_file import write_config_file

    # The best trial's own config at the tuning budget (the warm-up too), with this command's run.* and eval.* rather than
    # the trial's (its directory, no baselines): `train --config best.toml` places and scores it as any run.
    user = _resolve(preset, [*overrides, *budget], config_file)
    best_config = Config.from_dict(best.user_attrs["config"])
    best_config.run, best_config.eval = user.run, user.eval
    path = write_config_file(best_config, out / BEST_FILE, force=True)
    log(f"best: trial {best.number} ({best.user_attrs.get('run_dir')}), {_shown(best.value, chosen)}; its settings in {path}: "
        f"`nocollapse train --config {path}` (add optim.epochs=N to train it longer)")
    return study


def _open_storage(optuna: Any, url: str, attempts: int = 5) -> Any:
    """The Optuna storage at ``url``, with a heartbeat that marks a trial whose process died as failed (so the study
    does not wait on it forever). Processes that open a new database at the same moment race to create its tables
    (one gets "table already exists" or a duplicate schema version): the loser waits and opens it again."""
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna's words; it has been there since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as error:
            problem = error
            time.sleep(0.2 * (attempt + 1))
        except Exception as error:  # noqa: BLE001 - a bad URL, a missing driver, a server that does not answer
            problem = error
            break
    driver = isinstance(problem, ImportError) or isinstance(problem.__cause__, ImportError)
    hint = "; for PostgreSQL install 'psycopg[binary]', for MySQL pymysql" if driver else ""
    raise UserError(f"--storage {url}: cannot open it ({type(problem).__name__}: {str(problem).splitlines()[0]}){hint}")


OBJECTIVE_NAMES = {"knn": "final kNN top-1", "rankme": "RankMe of the features (label-free: the data has no labelled train/ and test/ splits)"}


def _shown(value: float | None, objective: str) -> str:
    if value is None:
        return "–"
    return f"kNN {100 * value:.2f}%" if objective == "knn" else f"RankMe {value:.1f}"


def _best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda trial: trial.value) if complete else None


def _resolve(preset: str, overrides: list[str], config_file: str | Path | None) -> Config:
    if config_file:
        from nocollapse.config_file import config_from_file

        return config_from_file(config_file, preset, overrides)
    return resolve_config(preset, overrides)


def _choose_objective(objective: str, config: Config) -> str:
    """``auto``: kNN where the dataset has labelled train and test splits, else RankMe; kNN on data without them is refused."""
    from nocollapse.data.registry import dataset_splits

    labelled = {"train", "test"} <= set(dataset_splits(config.data.dataset, config.data.data_dir))
    if objective == "knn" and not labelled:
        raise UserError(f"--objective knn needs labelled train/ and test/ splits, which {config.data.data_dir or config.data.dataset} "
                        "has not; tune on --objective rankme (label-free)")
    if objective != "auto":
        return objective
    return "knn" if labelled else "rankme"
