"""The seed papers' headline claims, reproduced in miniature, each with a verdict: ``nocollapse claims [--quick] --out DIR``.

Each :class:`Claim` names the paper, what it claims, the runs that test it (settings × seeds, trained as a sweep in
``DIR/runs``) and how its verdict follows from their figures: *holds*, *does not hold*, or *inside the seed spread*
when Welch's t-test (p < 0.05) cannot tell the settings apart. The kernel family's claim needs no training: it is
checked on random embeddings, identities against their closed forms and the cost at growing embedding sizes.
``DIR/index.html`` shows every verdict with its figures and the commands behind them; ``DIR/claims.json`` the same
as data.
"""

from __future__ import annotations

import html
import math
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nocollapse.config import EvalConfig
from nocollapse.errors import UserError
from nocollapse.report.runs import RunRecord, load_runs
from nocollapse.report.seeds import SIGNIFICANCE, mean_std_text, welch_p_value
from nocollapse.sweep import Sweep, SweepRun, run_sweep
from nocollapse.train.checkpoint import atomic_write_bytes, save_json
from nocollapse.train.collapse import STD_WARNING, rankme_warning_level

HOLDS, FAILS, SPREAD = "holds", "does not hold", "inside the seed spread"


@dataclass(frozen=True)
class Setting:
    """One configuration a claim trains: ``nocollapse train --preset PRESET OVERRIDES``, and what --quick changes."""

    name: str
    label: str
    preset: str
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("optim.epochs=1", "optim.warmup_epochs=0.25")  # a quarter of the presets' 4-epoch budget
    full: tuple[str, ...] = ()  # what the full budget changes in the preset


@dataclass
class Part:
    """One checked statement of a claim and its verdict."""

    statement: str
    verdict: str
    evidence: str


@dataclass
class Verdict:
    claim: Claim
    parts: list[Part]
    rows: list[list[str]] = field(default_factory=list)  # the figures behind it, one row per setting
    header: list[str] = field(default_factory=list)

    @property
    def overall(self) -> str:
        """A claim is the conjunction of its parts: it holds when every part holds, does not hold when the seeds contradict
        any part, and is inside the seed spread otherwise."""
        verdicts = [part.verdict for part in self.parts]
        return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else SPREAD


@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    statement: str
    settings: tuple[Setting, ...]
    judge: Callable[[dict[str, list[RunRecord]]], list[Part]]
    measures: tuple[str, ...]  # the columns of its table (see MEASURES)


# ---- what is read from a run --------------------------------------------------------------------------------------

def _trained(run: RunRecord) -> dict[str, Any]:
    return run.trained_row() or {}


def _projections(run: RunRecord) -> dict[str, Any]:
    found = [p for p in (run.evaluation or {}).get("projections", []) if not p["name"].startswith("random")]
    return (found[-1].get("geometry") or {}) if found else {}


def _projection_spread(run: RunRecord) -> float | None:
    """std·√d of the normalised projections: about 1 when spread, 0 when collapsed to a point."""
    geometry = _projections(run)
    return geometry["std"] * math.sqrt(geometry["dim"]) if geometry.get("std") is not None else None


MEASURES: dict[str, tuple[Callable[[RunRecord], float | None], float, int]] = {  # reader, display scale, digits
    "kNN k=20 (%)": (lambda run: _trained(run).get("knn", {}).get("20"), 100, 2),
    "feat. RankMe": (lambda run: (_trained(run).get("geometry") or {}).get("rankme"), 1, 1),
    "feat. separability": (lambda run: (_trained(run).get("geometry") or {}).get("separability"), 1, 3),
    "proj. uniformity": (lambda run: _projections(run).get("uniformity"), 1, 3),
    "proj. std·√d": (_projection_spread, 1, 3),
}


def values(runs: Sequence[RunRecord], measure: str) -> list[float]:
    read = MEASURES[measure][0]
    return [float(v) for run in runs if (v := read(run)) is not None]


def compare(better: Sequence[float], worse: Sequence[float], statement: str, measure: str, *, higher_is_better: bool = True) -> Part:
    """``statement`` (the first setting beats the second on ``measure``) judged by Welch's t-test over the seeds."""
    if not better or not worse:
        return Part(statement, SPREAD, f"{measure}: not measured")
    difference = statistics.fmean(better) - statistics.fmean(worse)
    p_value = welch_p_value(better, worse)
    _, scale, digits = MEASURES[measure]
    shown = f"{measure}: {mean_std_text(better, scale, digits)} against {mean_std_text(worse, scale, digits)}, difference {scale * difference:+.{digits}f}"
    if p_value is None or p_value >= SIGNIFICANCE:
        return Part(statement, SPREAD, shown + (f", Welch p = {p_value:.3g}" if p_value is not None else ", one seed: not tested"))
    right_way = difference > 0 if higher_is_better else difference < 0
    return Part(statement, HOLDS if right_way else FAILS, shown + f", Welch p = {p_value:.3g}")


def collapsed(run: RunRecord) -> bool | None:
    """Whether a run's projections collapsed, by the levels at which training warns: to a point (std·√d below
    STD_WARNING) or to a few directions (RankMe below :func:`~nocollapse.train.collapse.rankme_warning_level`)."""
    geometry, spread = _projections(run), _projection_spread(run)
    if spread is None or geometry.get("rankme") is None:
        return None
    return spread < STD_WARNING or geometry["rankme"] < rankme_warning_level(geometry["dim"])


def collapse_part(runs: Sequence[RunRecord], statement: str, *, collapses: bool) -> Part:
    """Whether every seed collapsed (``collapses``) or none did (:func:`collapsed`)."""
    measured = [(run, state) for run in runs if (state := collapsed(run)) is not None]
    if not measured:
        return Part(statement, SPREAD, "not measured")
    collapsed_ = [state for _, state in measured]
    evidence = "per seed, proj. std·√d / RankMe: " + ", ".join(
        f"{_projection_spread(run):.3f} / {_projections(run)['rankme']:.1f}" for run, _ in measured) + \
        f" (collapse: std·√d below {STD_WARNING} or RankMe below {rankme_warning_level(_projections(measured[0][0])['dim']):.2g})"
    if all(c == collapses for c in collapsed_):
        return Part(statement, HOLDS, evidence)
    if all(c != collapses for c in collapsed_):
        return Part(statement, FAILS, evidence)
    return Part(statement, SPREAD, evidence + ": the seeds disagree")


# ---- the claims ---------------------------------------------------------------------------------------------------

BYOL = Setting("byol", "BYOL (predictor, EMA target)", "fmnist-byol")
NO_PREDICTOR = Setting("byol-no-predictor", "BYOL without its predictor", "fmnist-byol", ("model.predictor_hidden=0",))
# BYOL's "τ = 0 over the full training": a constant τ, not the cosine from τ_base = 0 (which rises to 1 and so stales the target).
NO_EMA = Setting("byol-no-ema", "BYOL with τ = 0 throughout (target = online)", "fmnist-byol", ("method.byol.ema_base=0", "method.byol.ema_schedule=constant"))
# W-MSE 4's 64 images × 4 views a step cost what W-MSE 2's 128 × 2 do, and it has twice the steps an epoch (937 against 468):
# one epoch of it is two of W-MSE 2 in steps and views. Full: 6 epochs of W-MSE 2 (2808 steps) against the preset's 3 of
# W-MSE 4 (2811); the warm-up the same 234 steps (117 when quick) for both.
WMSE2 = Setting("wmse2", "W-MSE 2", "fmnist-wmse2", quick=("optim.epochs=2", "optim.warmup_epochs=0.25"),
                full=("optim.epochs=6", "optim.warmup_epochs=0.5"))
WMSE4 = Setting("wmse4", "W-MSE 4", "fmnist-wmse4", quick=("optim.epochs=1", "optim.warmup_epochs=0.125"), full=("optim.warmup_epochs=0.25",))
BYOL_SV_BD = Setting("byol+sv+bd", "BYOL + SV + BD (MSBReg's terms)", "fmnist-byol", ("regularizers.singular_value=30", "regularizers.brownian=0.1"))
REMEDIES = (Setting("byol+infonce", "BYOL + InfoNCE", "byol+contrastive"), Setting("byol+uniformity", "BYOL + uniformity", "byol+uniformity"),
            Setting("byol+mhe", "BYOL + MHE", "byol+mhe"))


def _judge_byol(groups: dict[str, list[RunRecord]]) -> list[Part]:
    return [collapse_part(groups["byol-no-predictor"], "without the predictor, BYOL collapses", collapses=True),
            collapse_part(groups["byol-no-ema"], "with τ = 0 throughout (the online network as its own target), BYOL collapses", collapses=True),
            collapse_part(groups["byol"], "with its predictor and EMA target, BYOL does not collapse", collapses=False)]


def _judge_wmse(groups: dict[str, list[RunRecord]]) -> list[Part]:
    knn = "kNN k=20 (%)"
    return [compare(values(groups["wmse4"], knn), values(groups["wmse2"], knn), "W-MSE 4 is more accurate than W-MSE 2 at the same cost", knn)]


def _judge_msbreg(groups: dict[str, list[RunRecord]]) -> list[Part]:
    with_terms, without = groups["byol+sv+bd"], groups["byol"]
    return [compare(values(with_terms, "feat. RankMe"), values(without, "feat. RankMe"), "the SV and BD terms raise the rank of BYOL's features",
                    "feat. RankMe"),
            compare(values(with_terms, "kNN k=20 (%)"), values(without, "kNN k=20 (%)"), "the SV and BD terms raise BYOL's accuracy", "kNN k=20 (%)")]


def _judge_remedies(groups: dict[str, list[RunRecord]]) -> list[Part]:
    parts = []
    for remedy in REMEDIES:
        runs, byol = groups[remedy.name], groups["byol"]
        parts.append(compare(values(runs, "proj. uniformity"), values(byol, "proj. uniformity"),
                             f"{remedy.label}: more uniform projections than BYOL", "proj. uniformity", higher_is_better=False))
        parts.append(compare(values(runs, "feat. separability"), values(byol, "feat. separability"),
                             f"{remedy.label}: more separable features than BYOL", "feat. separability"))
    return parts


CLAIMS: tuple[Claim, ...] = (
    Claim("byol-collapse", "BYOL (Grill et al., 2020), Table 5",
          "BYOL collapses without its predictor and with τ = 0, but not with its EMA target.",
          (BYOL, NO_PREDICTOR, NO_EMA), _judge_byol, ("kNN k=20 (%)", "feat. RankMe", "proj. std·√d")),
    Claim("wmse-views", "W-MSE (Ermolov et al., 2021)",
          "W-MSE with 4 views per image beats W-MSE with 2 at the same cost (the same steps of 256 views).",
          (WMSE2, WMSE4), _judge_wmse, ("kNN k=20 (%)", "feat. RankMe")),
    Claim("msbreg-terms", "MSBReg (the singular value and Brownian diffusive terms)",
          "The singular value and Brownian terms raise the rank and the accuracy of BYOL.",
          (BYOL, BYOL_SV_BD), _judge_msbreg, ("kNN k=20 (%)", "feat. RankMe")),
    Claim("uniformity-remedies", "BYOL with uniformity: InfoNCE (Chen et al.), uniformity (Wang & Isola), MHE (Liu et al.)",
          "Adding InfoNCE, the uniformity loss or hyperspherical energy to BYOL makes its embeddings more uniform and more separable.",
          (BYOL, *REMEDIES), _judge_remedies, ("kNN k=20 (%)", "proj. uniformity", "feat. separability")),
)
KERNEL_CLAIM = ("kernel-family", "SFRIK (kernel uniformity, Gegenbauer kernels)",
                "The kernel family contains the uniformity and covariance regularizers, and stays cheap at large embedding sizes.")


# ---- the kernel family, checked without training --------------------------------------------------------------------

def kernel_family_parts(sizes: Sequence[int], *, batch: int = 256, repeats: int = 3) -> tuple[list[Part], list[list[str]]]:
    """The identities on random embeddings, then the cost of Ψ against the q × q covariance penalty as q grows."""
    import torch

    from nocollapse.losses.kernels import GaussianKernel, GegenbauerKernel, kernel_uniformity
    from nocollapse.losses.uniformity import uniformity_loss

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(batch, 64, generator=generator, dtype=torch.float64) + 0.3  # off-centre, anisotropic enough
    u = torch.nn.functional.normalize(z, dim=1)
    q = u.shape[1]
    covariance = u.T @ u / batch
    whitening = q / (q - 1) * (covariance - torch.eye(q, dtype=u.dtype) / q).square().sum()
    psi2 = kernel_uniformity(u, GegenbauerKernel((0.0, 1.0)), path="gram")
    centring = u.mean(0).square().sum()
    psi1 = kernel_uniformity(u, GegenbauerKernel((1.0,)), path="gram")
    uniformity = uniformity_loss(u.unsqueeze(0), t=2.0)
    psi_gauss = kernel_uniformity(u, GaussianKernel(2.0), path="gram")
    from_uniformity = (1 + (batch - 1) * torch.exp(uniformity)) / batch
    close = lambda a, b: abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))  # noqa: E731
    parts = [
        Part("b = (0, 1): Ψ is the covariance (whitening) penalty q/(q−1)·‖C − I/q‖²", HOLDS if close(psi2, whitening) else FAILS,
             f"Ψ = {float(psi2):.12f}, the penalty computed from C = {float(whitening):.12f} (float64, N = {batch}, q = {q})"),
        Part("b = (1): Ψ is the centring penalty ‖z̄‖²", HOLDS if close(psi1, centring) else FAILS,
             f"Ψ = {float(psi1):.12f}, ‖z̄‖² = {float(centring):.12f}"),
        Part("the Gaussian kernel's Ψ is Wang & Isola's uniformity, (1 + (N − 1)·e^U)/N", HOLDS if close(psi_gauss, from_uniformity) else FAILS,
             f"Ψ = {float(psi_gauss):.12f}, from U = {float(uniformity):.6f}: {float(from_uniformity):.12f}"),
    ]
    rows, kernel_times, covariance_times = [], [], []
    for size in sizes:
        x = torch.randn(batch, size, generator=generator, requires_grad=True)

        def timed(loss: Callable[[torch.Tensor], torch.Tensor]) -> float:
            best = math.inf
            for _ in range(repeats):
                started = time.perf_counter()
                loss(x).backward()
                best = min(best, time.perf_counter() - started)
                x.grad = None
            return best

        kernel = timed(lambda e: kernel_uniformity(e, GegenbauerKernel((1.0, 40.0, 40.0))))
        unit = lambda e: torch.nn.functional.normalize(e, dim=1)  # noqa: E731
        penalty = timed(lambda e: (unit(e).T @ unit(e) / batch - torch.eye(size) / size).square().sum())
        kernel_times.append(kernel)
        covariance_times.append(penalty)
        rows.append([str(size), f"{1000 * kernel:.1f}", f"{1000 * penalty:.1f}", f"{penalty / kernel:.1f}×"])
    growth = kernel_times[-1] / kernel_times[0]
    linear = sizes[-1] / sizes[0]
    cheap = growth <= 2 * linear and kernel_times[-1] < covariance_times[-1]
    parts.append(Part(f"Ψ (b = 1, 40, 40) stays cheap as q grows: its cost grows about linearly in q, below the q × q covariance "
                      f"penalty's at q = {sizes[-1]}", HOLDS if cheap else FAILS,
                      f"forward + backward at N = {batch}: ×{growth:.1f} from q = {sizes[0]} to {sizes[-1]} (q grew ×{linear:.0f}); "
                      f"{1000 * kernel_times[-1]:.1f} ms against {1000 * covariance_times[-1]:.1f} ms for the covariance penalty"))
    return parts, rows


# ---- running them ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    seeds: tuple[int, ...]
    quick: bool
    kernel_sizes: tuple[int, ...]

    def describe(self) -> str:
        scale = ("a quarter of BYOL's 4 epochs for BYOL and its variants, the same steps for W-MSE 2 and 4 (2 epochs and 1), "
                 f"kNN only, from {QUICK_BANK} training images"
                 if self.quick else "the presets' budgets (W-MSE 2 at W-MSE 4's steps)")
        return f"seeds {', '.join(map(str, self.seeds))}; {scale}"


QUICK_BANK = EvalConfig().monitor_train_samples  # training images the quick runs' kNN votes from (eval.train_samples)
QUICK = Budget(seeds=(0, 1), quick=True, kernel_sizes=(256, 2048, 8192))
FULL = Budget(seeds=(0, 1, 2), quick=False, kernel_sizes=(256, 2048, 8192, 16384))


def planned_runs(claims: Sequence[Claim], budget: Budget, overrides: Sequence[str] = ()) -> list[SweepRun]:
    """Every setting of ``claims`` once (BYOL is shared), for each seed."""
    settings = list({setting.name: setting for claim in claims for setting in claim.settings}.values())
    # Quick: kNN from the monitor's bank, not all 60k training images, whose encoding was about a third of a quick run.
    quick = ["eval.linear_probe=false", "eval.baselines=false", f"eval.train_samples={QUICK_BANK}"] if budget.quick else []
    # The claim's own settings last: a setting for every run (a smaller network, another device) must not undo what a claim tests.
    return [SweepRun(f"{setting.name}-seed{seed}", setting.preset,
                     (*(setting.quick if budget.quick else setting.full), *quick, *overrides, *setting.overrides), seed)
            for setting in settings for seed in budget.seeds]


CLAIM_KEYS = (*(claim.key for claim in CLAIMS), KERNEL_CLAIM[0])


def check_claims(out: Path | str, *, quick: bool = False, jobs: int = 1, overrides: Sequence[str] = (), only: Sequence[str] = (),
                 log: Callable[[str], object] = print) -> list[Verdict]:
    """Train what the claims need in ``out/runs`` (resumable, as a sweep), judge every claim (or those named in ``only``)
    and write the page."""
    out = Path(out)
    budget = QUICK if quick else FULL
    unknown = [key for key in only if key not in CLAIM_KEYS]
    if unknown:
        raise UserError(f"--only {','.join(unknown)}: no such claim; the claims: {', '.join(CLAIM_KEYS)}")
    chosen = [claim for claim in CLAIMS if not only or claim.key in only]
    with_kernel = not only or KERNEL_CLAIM[0] in only
    runs = planned_runs(chosen, budget, overrides)
    for run in runs:  # every run's settings checked before the first trains: a typo must not cost the runs before it
        run.config(out / "runs")
    log(f"claims: {len(chosen) + int(with_kernel)} claim(s), {len(runs)} runs ({budget.describe()}) in {out / 'runs'}")
    started = time.perf_counter()
    reused = len(runs) - len(Sweep(runs, out / "runs").pending()) if runs else 0
    sweep = run_sweep(runs, out / "runs", jobs=jobs, reports=False, log=log) if runs else None
    failed = [name for name, status in (sweep.status.items() if sweep else ()) if status.status != "done"]
    if failed:
        raise UserError(f"{len(failed)} run(s) of the claims did not finish ({', '.join(failed)}; logs in {out / 'runs' / 'logs'}); "
                        "rerun the same command to retry them")
    records = {record.path.name: record for record in load_runs([out / "runs" / run.name for run in runs])} if runs else {}
    fitted = {name: (record.evaluation or {}).get("labelled_train_images") for name, record in records.items()}
    if len(set(fitted.values())) > 1:  # a directory begun by an older nocollapse, or with other eval.* settings
        raise UserError(f"the runs in {out / 'runs'} fitted their kNN on different numbers of training images ("
                        + ", ".join(f"{name}: {count}" for name, count in sorted(fitted.items())) + "), so their figures do not compare; "
                        "check the claims into a fresh --out")
    verdicts = []
    for claim in chosen:
        groups = {s.name: [records[f"{s.name}-seed{seed}"] for seed in budget.seeds] for s in claim.settings}
        verdict = Verdict(claim, claim.judge(groups), header=["setting", "n", *claim.measures])
        verdict.rows = [[setting.label, str(len(groups[setting.name])),
                         *(mean_std_text(values(groups[setting.name], m), *MEASURES[m][1:]) for m in claim.measures)] for setting in claim.settings]
        verdicts.append(verdict)
    if with_kernel:
        log("claims: the kernel family, on random embeddings …")
        kernel_parts, kernel_rows = kernel_family_parts(budget.kernel_sizes)
        verdicts.append(Verdict(Claim(*KERNEL_CLAIM, (), lambda _: [], ()), kernel_parts, kernel_rows,
                                ["q", "Ψ fwd+bwd (ms)", "covariance penalty fwd+bwd (ms)", "penalty / Ψ"]))
    minutes = (time.perf_counter() - started) / 60
    datasets = sorted({record.dataset for record in records.values()})
    write_page(out, verdicts, runs, budget, minutes, datasets, reused)
    for verdict in verdicts:
        log(f"  {verdict.overall:<22} {verdict.claim.paper}: {verdict.claim.statement}")
    log(f"claims: {out / 'index.html'} ({minutes:.1f} min)")
    return verdicts


def _command(run: SweepRun) -> str:
    return shlex.join(["nocollapse", "train", "--preset", run.preset, *run.overrides, f"run.seed={run.seed}"])


BADGE = {HOLDS: "#2e7d32", FAILS: "#c62828", SPREAD: "#8d6e00"}


def write_page(out: Path, verdicts: list[Verdict], runs: list[SweepRun], budget: Budget, minutes: float, datasets: Sequence[str] = (),
               reused: int = 0) -> Path:
    """``out/index.html``: one section per claim (verdict, its parts with their evidence, the figures, the commands) and
    ``out/claims.json``."""
    from nocollapse.report.html import STYLE, html_table

    sections = []
    for verdict in verdicts:
        claim = verdict.claim
        badge = f'<span style="background:{BADGE[verdict.overall]};color:#fff;padding:2px 8px;border-radius:4px">{verdict.overall}</span>'
        parts = "".join(f"<li><b>{html.escape(part.verdict)}</b>: {html.escape(part.statement)}. <span class=\"caption\">"
                        f"{html.escape(part.evidence)}</span></li>" for part in verdict.parts)
        names = {setting.name for setting in claim.settings}
        commands = [_command(run) for run in runs if run.name.rsplit("-seed", 1)[0] in names]
        command_block = (f"<details><summary>commands ({len(commands)} runs)</summary><pre><code>{html.escape(chr(10).join(commands))}"
                         "</code></pre></details>") if commands else "<p class=\"caption\">No training: computed by nocollapse.claims.kernel_family_parts.</p>"
        sections.append(f'<section id="{claim.key}"><h2>{html.escape(claim.paper)}</h2><p>{html.escape(claim.statement)} {badge}</p>'
                        f"<ul>{parts}</ul>{html_table(verdict.header, verdict.rows, numeric_from=1)}{command_block}</section>")
    title = "nocollapse: the seed papers' claims, in miniature"
    took = f"this command took {minutes:.1f} min" + (f", reusing {reused} of the {len(runs)} runs from before (their times: runs/sweep.json)"
                                                      if reused else "")
    lede = (f"{budget.describe()}{'; ' + ', '.join(datasets) if datasets else ''}; {took}. A verdict holds when Welch's two-sided t-test over the seeds puts the difference "
            f"in the claimed direction (p &lt; {SIGNIFICANCE}), does not hold when it puts it the other way, and is inside the seed "
            f"spread otherwise. Collapse: the projections' std·√d below {STD_WARNING}, or their RankMe below the level at which "
            f"training warns. With {len(budget.seeds)} seeds a side, only a difference of several spreads passes the test.")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head><body><main>'
            f'<h1>{title}</h1><p class="lede">{lede}</p>{"".join(sections)}</main></body></html>\n')
    path = out / "index.html"
    atomic_write_bytes(path, lambda file: file.write(page.encode()))
    save_json(out / "claims.json", {"budget": budget.describe(), "datasets": list(datasets), "minutes": round(minutes, 1), "reused_runs": reused,
                                    "claims": [
        {"key": v.claim.key, "paper": v.claim.paper, "statement": v.claim.statement, "verdict": v.overall,
         "parts": [vars(part) for part in v.parts], "header": v.header, "rows": v.rows} for v in verdicts]})
    return path
