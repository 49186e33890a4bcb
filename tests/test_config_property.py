"""Property tests of the configuration: whatever the settings, a clean error or a valid run, never a traceback.

A. ``resolve_config`` on random overrides of every key returns a Config or raises UserError.
B. ``nocollapse train`` (in process) on random overrides of tiny settings, with its final evaluation,
   exits 0 with eval.json written, or exits 2 with a ``nocollapse train: error:`` message.

Both are derandomized (the same examples on every run) so that a failure in CI reproduces locally.
"""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import write_tiny_fashion_mnist
from nocollapse.cli import main
from nocollapse.config import CHOICES, Config, resolve_config, valid_keys
from nocollapse.errors import UserError


def annotation(key: str) -> object:
    """The declared type of a dotted key, e.g. ``tuple[float, float]`` for augment.crop_scale."""
    *sections, name = key.split(".")
    section: object = Config()
    for part in sections:
        section = getattr(section, part)
    return typing.get_type_hints(type(section))[name]


def kind(key: str) -> str:
    """bool | int | float | str | tuple[int] | tuple[float] (optional types by their inner type)."""
    text = str(annotation(key))
    for name in ("tuple[int", "tuple[float", "bool", "int", "float", "str"):
        if name in text:
            return name.replace("[", "_")
    raise AssertionError(f"{key}: no value strategy for {text}")


# ---- values ----------------------------------------------------------------------------------------
# Each value is text as typed on the command line. Numbers sit inside, on and just outside every range
# (negative, 0, the [0, 1] and (0, 1] ends, 2 = the smallest batch), plus nan, inf and huge values.
NUMBERS = ["-1", "-0.5", "0", "0.0", "1e-3", "0.1", "0.5", "0.99", "1", "1.0", "1.5", "2", "3", "4", "5", "16", "64",
           "nan", "inf", "-inf", "1e309", "1e30", "9223372036854775807", "9223372036854775808", "99999999999999999999"]
GARBAGE = ["", " ", "abc", "none", "true", "0x10", "1_0", "1,", ",", "1,,2", "½", "x\0y", "a/b", ".", "..", "cuda:128", "cuda:01", "-"]
DEVICES = ["auto", "cpu", "cuda", "cuda:0", "cuda:127"]
BOOLS = ["true", "false", "1", "0", "yes", "off", "maybe"]


def tuple_text(items: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """0 to 4 comma-separated items: wrong lengths for the pairs (crop_scale), empty for the lists."""
    return st.lists(items, min_size=0, max_size=4).map(",".join)


@functools.cache
def any_value(key: str) -> st.SearchStrategy[str]:
    """Well-typed values of the key's kind (its choices for a choice key), and anything at all."""
    typed = {
        "bool": st.sampled_from(BOOLS),
        "int": st.sampled_from(NUMBERS) | st.integers(-3, 300).map(str),
        "float": st.sampled_from(NUMBERS),
        "str": st.sampled_from(DEVICES if key == "run.device" else ["x", "run-1", "a b"]),
        "tuple_int": tuple_text(st.sampled_from(NUMBERS)),
        "tuple_float": tuple_text(st.sampled_from(NUMBERS)),
    }[kind(key)]
    choices = st.sampled_from([str(c) for c in CHOICES[key]]) if key in CHOICES else st.nothing()
    return st.one_of(choices, typed, st.sampled_from(GARBAGE), tuple_text(st.sampled_from(NUMBERS + GARBAGE[:4])), st.text(max_size=6))


def overrides(keys: list[str], value: st.SearchStrategy[str] | None = None, *, size: int = 4) -> st.SearchStrategy[list[str]]:
    """1 to ``size`` ``key=value`` overrides of distinct keys."""
    return st.lists(st.sampled_from(keys), min_size=1, max_size=size, unique=True).flatmap(
        lambda chosen: st.tuples(*(any_value(key) if value is None else value(key) for key in chosen)).map(
            lambda texts: [f"{key}={text}" for key, text in zip(chosen, texts)]))


# ---- A: resolving ----------------------------------------------------------------------------------
KEYS = valid_keys()


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(overrides(KEYS))
def test_any_overrides_resolve_or_raise_a_user_error(chosen):
    try:
        config = resolve_config("fmnist", chosen)
    except UserError as error:
        # The preset is valid, so one of the overrides broke it, and the message names it (alone or with the
        # key it conflicts with), or the override is not of the form key=value.
        overridden = [text.partition("=")[0] for text in chosen]
        assert any(key and key in str(error) for key in overridden) or any("=" not in text for text in chosen), \
            f"the error names none of the overridden keys {overridden}: {error}"
        return
    # A resolved config is valid: it round-trips through its saved form.
    assert Config.from_dict(config.to_dict()) == config


# ---- B: training and evaluating --------------------------------------------------------------------
# Small enough that one run (train + monitor + evaluation with baselines) takes about half a second on one
# CPU thread, so that 100 runs fit in the test's budget; the random overrides come after these and may undo them.
TINY = ["optim.epochs=1", "optim.batch_size=16", "model.widths=4,8", "model.projector_hidden=16", "model.projection_dim=8",
        "model.predictor_hidden=16", "method.wmse.w_size=16", "eval.knn_k=5", "eval.probe_epochs=1", "eval.probe_min_steps=0",
        "run.device=cpu", "run.log_every=2"]
TRAIN_IMAGES, TEST_IMAGES = 64, 32

# Keys the runs do not vary, and why.
NOT_RUN = {
    "run.compile": "torch.compile takes minutes on a CPU",
    "run.out_dir": "set by the test (a fresh directory per run)",
    "data.data_dir": "set by the test (the generated dataset)",
    "model.backbone": "a resnet costs 5-20 s per tiny run on a CPU (test_resnet.py covers them)",
}
# Values of the keys whose cost grows with their value, kept small so that a run takes seconds; each list
# still crosses its key's boundaries: a batch and a kNN k above the 64 training images, a crop larger
# than the 28-pixel images, 3 views with W-MSE, a convnet deep enough to shrink a 4-pixel crop to one pixel.
SMALL = {
    "optim.epochs": ["-1", "0", "1", "2", "1.5"],
    "eval.probe_epochs": ["-1", "0", "1", "2"],
    "eval.probe_min_steps": ["-1", "0", "1", "20"],
    "model.depth": ["0", "1", "2"],
    "augment.num_views": ["1", "2", "3", "4"],
    "augment.crop_size": ["none", "3", "4", "5", "40"],
    "model.widths": ["", "0", "4", "4,8,8,8,8", "2,-1"],
    "model.projector_hidden": ["0", "1", "2", "33"],
    "model.projection_dim": ["0", "1", "2", "33"],
    "model.predictor_hidden": ["0", "1", "2", "33"],
    "optim.batch_size": ["1", "2", "3", "32", "64", "65"],
    "method.wmse.w_size": ["1", "2", "8", "9", "32", "65"],
    "method.wmse.w_iter": ["0", "1", "3"],
    "eval.knn_k": ["0", "1", "64", "65", "5,200", ""],
    "eval.knn_euclidean_k": ["", "0", "1", "64,65"],
    "eval.monitor_train_samples": ["0", "1", "2", "65"],
    "eval.train_samples": ["0", "1", "2", "65"],
    "run.checkpoint_every": ["0", "1", "3", "-1"],
    "run.max_skipped_steps": ["0", "3", "-1"],
    "run.seed": ["0", "-1", "9223372036854775807", "9223372036854775808"],
    # Pairs: random comma-separated lists are almost never a valid min,max, so these list some that are.
    "augment.crop_scale": ["0.08,1", "1,1", "1e-3,1e-3", "0.9,0.1", "0,1", "0.5", "0.2,1,1"],
    "augment.crop_ratio": ["0.75,1.33", "1,1", "0.1,10", "2,1", "1"],
    "augment.blur_sigma": ["0.1,2", "1e-3,1e-3", "5,50", "0,1", "2"],
    "run.name": ["", "a", ".", "..", "a/b", " ", "x\0y"],
    "run.device": ["auto", "cpu", "cuda", "cuda:1", "cuda:128", "mps", "gpu"],
}
FLOATS = ["-1", "0", "1e-3", "0.1", "0.5", "0.99", "1", "1.5", "40", "nan", "inf"]


@functools.cache
def small_value(key: str) -> st.SearchStrategy[str]:
    """Mostly well-typed values near the key's range (a run is only exercised when all of them are valid),
    a few garbage ones."""
    if key in SMALL:
        return st.sampled_from(SMALL[key])
    typed = {
        "bool": st.sampled_from(["true", "false", "maybe"]),
        "int": st.sampled_from(["-1", "0", "1", "2", "3", "1000", "x"]),  # the other ints cost nothing at any size (log_every, ...)
        "float": st.sampled_from(FLOATS),
        "str": st.sampled_from(["x", ""]),
        "tuple_int": tuple_text(st.sampled_from(["-1", "0", "1", "2", "x"])),
        "tuple_float": tuple_text(st.sampled_from(["-1", "0", "0.1", "0.5", "1", "1.5", "nan"])),
    }[kind(key)]
    return st.one_of(st.sampled_from([str(c) for c in CHOICES[key]]), typed) if key in CHOICES else typed


# The keys whose values meet at run time (sizes, views, the method and its terms, evaluation) come up
# three times as often as the rest: 100 runs of 1-5 overrides cannot visit every value of all 100 keys, and these are where runs break.
RUN_KEYS = sorted(set(valid_keys()) - set(NOT_RUN))
FOCUS = [key for key in RUN_KEYS if key in SMALL or key in CHOICES or key.startswith(("regularizers.", "augment.", "eval."))]


@pytest.fixture(scope="module")
def tiny_fashion_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_fashion_mnist(tmp_path_factory.mktemp("data"), train=TRAIN_IMAGES, test=TEST_IMAGES)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors run fastest on one thread: with two, a run took 10 s instead of 0.4 s while another
    process shared the 2 cores (the threads spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@settings(max_examples=100, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides(RUN_KEYS + 2 * FOCUS, small_value, size=5))
# Boundaries crossed on every run of the test, whatever hypothesis draws ("broke": it once ended in a traceback).
@example(chosen=["augment.crop_size=40"])  # broke: the raw-pixel alignment compared 40² with 28² pixels
@example(chosen=["augment.crop_size=4", "model.widths=4,8,8,8,8"])  # a 4-pixel crop through five stages
@example(chosen=["eval.knn_k=65,200", "eval.knn_euclidean_k=64,65", "eval.monitor_train_samples=1"])  # k above the bank
@example(chosen=["optim.batch_size=65"])  # a batch larger than the 64 training images
@example(chosen=["method.name=wmse", "augment.num_views=3"])
@example(chosen=["method.name=sfrik", "model.projection_dim=1"])  # broke: the kernel needs q >= 2
@example(chosen=["regularizers.kernel_uniformity=1", "model.projection_dim=1"])  # broke, as above
@example(chosen=["run.max_skipped_steps=3", "optim.lr=1e30"])  # broke: a diverged encoder's NaN features in the SVD
@example(chosen=["run.device=cuda"])  # no GPU here: a clean error
def test_any_tiny_run_trains_and_evaluates_or_exits_with_a_clean_error(tiny_fashion_mnist, one_torch_thread, chosen):
    with tempfile.TemporaryDirectory() as out_dir:
        stdout, stderr = io.StringIO(), io.StringIO()
        argv = ["train", "--quiet", "--no-report", *TINY, *chosen, f"data.data_dir={tiny_fashion_mnist}", f"run.out_dir={out_dir}"]
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
        errors = stderr.getvalue()
        event(f"exit {code}")  # --hypothesis-show-statistics: how many runs trained, how many stopped at an error
        if code == 0:
            assert list(Path(out_dir).rglob("eval.json")), f"exit 0 without eval.json: {errors}"
        else:
            assert code == 2, f"exit {code}: {errors}"
            assert errors.startswith("nocollapse train: error: ") and "Traceback" not in errors, errors


@pytest.mark.parametrize("test_images", [1, 2])
def test_a_test_split_too_small_for_the_geometry_is_a_clean_error(tmp_path, one_torch_thread, test_images):
    data = write_tiny_fashion_mnist(tmp_path / "data", train=TRAIN_IMAGES, test=test_images)
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        code = main(["train", "--quiet", "--no-report", *TINY, f"data.data_dir={data}", f"run.out_dir={tmp_path / 'runs'}"])
    assert code == 2 and "use a larger test split" in stderr.getvalue(), stderr.getvalue()
