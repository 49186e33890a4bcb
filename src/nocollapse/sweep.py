"""Sweeps: a grid of settings × seeds, each point an ordinary run directory, resumable and fault-tolerant.

``plan_sweep`` turns presets, seeds and ``key=v1,v2`` settings into :class:`SweepRun` s, every one of
them resolved and validated before anything starts (a typo must not cost the runs before it);
``run_sweep`` trains them as ``nocollapse train`` processes, ``jobs`` at a time with the CPU threads split
between them, and keeps ``OUT/sweep.json``: what each run is, its status, exit code and time. Run again
with the same command, a sweep skips its finished runs and resumes the interrupted ones from their
checkpoints; a failed run is recorded (its log in ``OUT/logs/``) and the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Any

from nocollapse.config import Config, key_arity, resolve_config, split_overrides
from nocollapse.errors import RunsStopped, UserError
from nocollapse.train.checkpoint import exclusive_lock, save_json
from nocollapse.train.loop import CHECKPOINT, changed_training_keys, load_run_config, run_directory
from nocollapse.train.signals import GracefulStop

SWEEP_FILE = "sweep.json"
LOG_DIR = "logs"
LOCK_FILE = ".sweep.lock"
STOPPED_EXIT_CODES = (130, 143, -2, -15)  # `nocollapse train` stopped by SIGINT or SIGTERM (after its checkpoint), or killed by them
# The sweep names, places and seeds each run itself.
SWEEP_OWNED_KEYS = {"run.seed": "--seeds", "run.out_dir": "--out", "run.name": "the sweep (one directory per grid point)"}


@dataclass(frozen=True)
class SweepRun:
    """One grid point and seed: ``nocollapse train --preset PRESET OVERRIDES run.seed=SEED`` in OUT/NAME."""

    name: str
    preset: str
    overrides: tuple[str, ...]  # key=value, the grid point's and the fixed ones
    seed: int
    config_file: str | None = None  # the --config file the settings start from

    def command(self, out: Path, *, resume: bool, report: bool = True) -> list[str]:
        base = ["--config", self.config_file] if self.config_file else []
        return [sys.executable, "-m", "nocollapse", "train", "--preset", self.preset, *base, *self.overrides, f"run.seed={self.seed}",
                f"run.out_dir={out}", f"run.name={self.name}", "--quiet", *(["--resume"] if resume else []), *([] if report else ["--no-report"])]

    def config(self, out: Path) -> Config:
        overrides = [*self.overrides, f"run.seed={self.seed}", f"run.out_dir={out}", f"run.name={self.name}"]
        if self.config_file:
            from nocollapse.config_file import config_from_file

            return config_from_file(self.config_file, self.preset, overrides)
        return resolve_config(self.preset, overrides)


def alternatives(key: str, text: str) -> list[str]:
    """The values ``text`` lists for ``key``: ``|`` separates them always, ``,`` too for a key of one value
    (``optim.lr=0.5,1``); a key that takes a list keeps its commas (``augment.crop_scale=0.2,1|0.8,1``)."""
    if key_arity(key) is not None:
        return [value.strip() for value in text.split("|")]
    return [value.strip() for value in re.split(r"[|,]", text)]


def _name_part(text: str) -> str:
    """A value as a piece of a directory name: commas, separators and other odd characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "none"


def plan_sweep(presets: list[str], seeds: list[int], settings: list[str], out: Path | str, *,
               config_file: str | Path | None = None) -> list[SweepRun]:
    """The runs of the grid ``presets`` (none: the config file's, else fmnist) × each setting's values × ``seeds``, in that order (seeds innermost),
    all validated. Names follow ``nocollapse train``'s (``<preset>-<method>-seed<seed>``) with each varied
    key's value before the seed: ``fmnist-byol-lr=0.5-seed1``."""
    out = Path(out)
    if not presets:  # the config file's preset, as `nocollapse train --config FILE` takes it
        from nocollapse.config_file import read_config_file

        presets = [(read_config_file(config_file)[0] if config_file else None) or "fmnist"]
    if not seeds:
        raise UserError("a sweep needs at least one seed (--seeds 0[,1,...])")
    if len(set(seeds)) != len(seeds) or len(set(presets)) != len(presets):
        raise UserError(f"--preset and --seeds list each value once (got presets {presets}, seeds {seeds})")
    axes: list[tuple[str, list[str]]] = []
    for key, text in split_overrides(settings):
        if key in SWEEP_OWNED_KEYS:
            raise UserError(f"{key} is set by {SWEEP_OWNED_KEYS[key]}, not as a sweep setting")
        if any(key == seen for seen, _ in axes):
            raise UserError(f"{key} is given twice; list all its values in one setting ({key}=v1,v2)")
        values = alternatives(key, text)
        if len(set(values)) != len(values):
            raise UserError(f"{key}={text}: a value is listed twice")
        axes.append((key, values))
    varied = [key for key, values in axes if len(values) > 1]
    short = {key: key.rsplit(".", 1)[-1] for key in varied}
    for key in varied:  # the last part of a key names it unless two varied keys share it
        if list(short.values()).count(short[key]) > 1:
            short[key] = key
    runs = []
    for preset in presets:
        for values in itertools.product(*(values for _, values in axes)):
            overrides = tuple(f"{key}={value}" for (key, _), value in zip(axes, values))
            suffix = "".join(f"-{short[key]}={_name_part(value)}" for (key, _), value in zip(axes, values) if key in short)
            for seed in seeds:
                unnamed = SweepRun("", preset, overrides, seed, str(config_file) if config_file else None)
                stem = run_directory(unnamed.config(out)).name.removesuffix(f"-seed{seed}")  # run.name="": train's default name
                runs.append(dataclasses.replace(unnamed, name=f"{stem}{suffix}-seed{seed}"))
    names = [run.name for run in runs]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise UserError(f"two grid points would share the run directory {clashes[0]} (values that differ only in characters a "
                        "directory name cannot keep); change one of them")
    return runs


@dataclass
class SweepStatus:
    """What ``OUT/sweep.json`` says of one run."""

    status: str  # pending | running | done | failed | interrupted
    returncode: int | None = None
    seconds: float = 0.0  # wall-clock of the attempts so far
    attempts: int = 0
    error: str = ""  # the end of the log of a failed run


class Sweep:
    """The runs of one sweep directory and their recorded status."""

    def __init__(self, runs: list[SweepRun], out: Path | str) -> None:
        self.runs, self.out = runs, Path(out)
        self.status: dict[str, SweepStatus] = {run.name: SweepStatus("pending") for run in runs}
        saved = self._read()
        for name, record in saved.items():
            if name in self.status:
                self.status[name] = SweepStatus(**{key: record[key] for key in ("status", "returncode", "seconds", "attempts", "error") if key in record})
        self._check_existing()

    def _read(self) -> dict[str, dict[str, Any]]:
        path = self.out / SWEEP_FILE
        if not path.is_file():
            return {}
        try:
            return {record["name"]: record for record in json.loads(path.read_text())["runs"]}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise UserError(f"{path} is damaged ({error}); move it away to start the sweep's bookkeeping afresh "
                            "(finished runs are then trained again only if their directories are removed)") from None

    def _check_existing(self) -> None:
        """A run directory of the same name with other training settings is another sweep's: refuse, before any run."""
        for run in self.runs:
            if not (self.out / run.name / "config.json").is_file():
                continue
            changed = changed_training_keys(load_run_config(self.out / run.name), run.config(self.out))
            if changed:
                raise UserError(f"{self.out / run.name} holds a run with other settings ({'; '.join(changed)}); "
                                "sweep into another --out, or remove that directory")

    def save(self) -> None:
        """Write this sweep's records, keeping those of other sweeps into the same directory (one report covers them all)."""
        records = {name: record for name, record in self._read().items() if name not in self.status}
        records |= {run.name: {"name": run.name, "preset": run.preset, "overrides": list(run.overrides), "seed": run.seed,
                               "config_file": run.config_file, **dataclasses.asdict(self.status[run.name])} for run in self.runs}
        save_json(self.out / SWEEP_FILE, {"runs": list(records.values())})

    def pending(self) -> list[SweepRun]:
        """The runs to train: all but those recorded done whose evaluation is still there (a removed run trains again)."""
        return [run for run in self.runs if self.status[run.name].status != "done" or not (self.out / run.name / "eval.json").is_file()]


def run_sweep(runs: list[SweepRun], out: Path | str, *, jobs: int = 1, threads: int | None = None, reports: bool = True,
              log: Callable[[str], object] = print, poll_seconds: float = 1.0) -> Sweep:
    """Train every run of ``runs`` not yet done in ``out``, ``jobs`` at a time with ``threads`` CPU threads each
    (default: the cores this process may use, split evenly), each writing its report unless ``reports`` is false;
    returns the sweep with each run's status.

    A run is a ``nocollapse train`` process (its output in OUT/logs/NAME.log); one with a checkpoint is resumed.
    SIGTERM or Ctrl-C stops the running ones at their next step boundary (each saves a checkpoint) and raises
    :class:`~nocollapse.errors.RunsStopped`; the same call later continues where they stopped."""
    out = Path(out)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be at least 1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = threads or max(1, cores // jobs)
    sweep = Sweep(runs, out)
    todo = sweep.pending()
    done_before = len(runs) - len(todo)
    log(f"sweep {out}: {len(runs)} runs, {done_before} done before, {len(todo)} to train, {jobs} at a time with {threads} thread(s) each")
    (out / LOG_DIR).mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    finished = done_before
    durations: list[float] = []
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def start(run: SweepRun) -> None:
        resume = (out / run.name / CHECKPOINT).exists()
        command = run.command(out, resume=resume, report=reports)
        log_file = (out / LOG_DIR / f"{run.name}.log").open("a", encoding="utf-8")
        log_file.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log_file.flush()
        # In the sweep's process group: a Ctrl-C in the terminal reaches the runs too, and each stops at a step boundary.
        # A run left behind by a sweep killed outright holds its directory's lock until it ends (Trainer.fit).
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=environment)
        running[run.name] = (process, time.perf_counter(), log_file)
        record = sweep.status[run.name]
        record.status, record.attempts = "running", record.attempts + 1
        sweep.save()
        log(f"[{finished + len(running)}/{len(runs)}] {'resumed' if resume else 'started'} {run.name}  (log: {out / LOG_DIR / run.name}.log)")

    def reap(name: str, *, stopped: bool = False) -> None:
        """Record a run that ended: done, failed, or interrupted (stopped by the sweep, or by the signal that stops it:
        a Ctrl-C reaches the runs too, and they exit 130 or 143 after saving a checkpoint)."""
        nonlocal finished
        process, began, log_file = running.pop(name)
        log_file.close()
        seconds = time.perf_counter() - began
        record = sweep.status[name]
        record.returncode, record.seconds = process.returncode, record.seconds + seconds
        if process.returncode == 0:
            record.status, record.error = "done", ""
            finished += 1
            durations.append(seconds)
            left = len(runs) - finished - len(running)
            eta = f", about {_duration(sum(durations) / len(durations) * (left + len(running)) / jobs)} left" if left + len(running) else ""
            log(f"[{finished}/{len(runs)}] done {name} in {_duration(seconds)}: {_scores(out / name)}{eta}")
        elif stopped or (stop.requested is not None and process.returncode in STOPPED_EXIT_CODES):
            record.status = "interrupted"
        else:
            record.status, record.error = "failed", _log_tail(out / LOG_DIR / f"{name}.log")
            finished += 1
            log(f"[{finished}/{len(runs)}] FAILED {name} (exit {process.returncode}) after {_duration(seconds)}:\n{_indent(record.error)}")
        sweep.save()

    def stop_all() -> None:
        for process, _, _ in running.values():
            process.terminate()  # SIGTERM: each run finishes its step and saves a checkpoint
        for name in list(running):
            running[name][0].wait()
            reap(name, stopped=True)

    queue = list(todo)
    with _only_sweep_in(out), GracefulStop() as stop:
        try:
            while queue or running:
                while queue and len(running) < jobs and stop.requested is None:
                    start(queue.pop(0))
                if stop.requested is not None:
                    stop_all()
                    break
                time.sleep(poll_seconds)
                for name in [name for name, (process, _, _) in running.items() if process.poll() is not None]:
                    reap(name)
            if stop.requested is not None:  # also when the signal came as the last runs ended
                raise RunsStopped(stop.requested, f"each saved a checkpoint; run the same `nocollapse sweep ... --out {out}` to continue")
        except BaseException:  # a fault of the sweep itself (a full disk, a second Ctrl-C): its runs must not train on unwatched
            stop_all()
            raise
    failed = [run.name for run in runs if sweep.status[run.name].status == "failed"]
    log(f"sweep {out}: {len(runs) - len(failed)} of {len(runs)} runs done" + (f"; failed: {', '.join(failed)} (logs in {out / LOG_DIR})" if failed else "")
        + f"; compare them with `nocollapse report {out} --out {out / 'report'}`")
    return sweep


def _only_sweep_in(out: Path) -> contextlib.AbstractContextManager[None]:
    """OUT/.sweep.lock while training: two sweeps in one directory would train the same runs twice."""
    return exclusive_lock(out / LOCK_FILE, lambda pid: f"another sweep (process {pid}) is training in {out}; wait for it, or stop it first")


def _scores(run_dir: Path) -> str:
    """The headline figures of a finished run: the trained encoder's kNN and linear top-1 (its row is the last)."""
    try:
        row = json.loads((run_dir / "eval.json").read_text())["rows"][-1]
        figures = [f"kNN k={k} {100 * value:.2f}" for k, value in row["knn"].items()]
        figures += [f"linear {100 * row['linear']['top1']:.2f}"] if row.get("linear") else []
        return "  ".join(figures) or "no labels to score"
    except (OSError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        return "no eval.json"


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").rstrip().splitlines()[-lines:])
    except OSError:
        return ""


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"
