"""`nocollapse tune` on a small labelled image folder this script writes: the tuned recipe against the default and raw pixels.

The folder (not Fashion-MNIST): RGB images of one of six shapes (disc, square, triangle, cross, ring, bar) in a random
colour, size, place and rotation on a noisy background of another colour; the class is the shape. Colour carries no
label, so a representation has to see past it, which the augmentation's colour jitter teaches.

Three recipes, each trained for --epochs on the folder's train/ split and scored on test/ (kNN k=20, cosine):
the default preset as a new user would run it on their images (`nocollapse train data.dataset=image-folder ...`),
the settings `nocollapse tune` found in --trials trials of --tune-epochs each, and raw pixels. The default and the
tuned recipe are each trained with --seeds, mean ± std. The study tunes on a second folder drawn from other seeds
(its own train/ and test/): choosing on the images that then score the choice would favour it.

    python benchmarks/tune_folder.py --out /tmp/tune-folder                           # about 40 minutes on 2 CPU cores
    python benchmarks/tune_folder.py --out /tmp/tf --trials 2 --tune-epochs 1 --epochs 1 --seeds 0 --per-class 40   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")


def shape_image(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of ``kind``: a random colour, size, place and rotation on a noisy background of another colour."""
    background = rng.integers(0, 256, 3)
    colour = (background + rng.integers(80, 176, 3)) % 256  # far enough from the background in some channel
    scale = 4  # drawn large, then reduced: smooth edges
    big = size * scale
    image = Image.new("RGB", (big, big), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.38) * big
    cx, cy = (rng.uniform(radius, big - radius) for _ in range(2))
    fill = tuple(int(c) for c in colour)
    angle = rng.uniform(0, 2 * math.pi)

    def polygon(points: list[tuple[float, float]]) -> None:
        rotated = [(cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)) for x, y in points]
        draw.polygon(rotated, fill=fill)

    r = radius
    if kind == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        polygon([(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)])
    elif kind == "triangle":
        polygon([(r * math.cos(a), r * math.sin(a)) for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)])
    elif kind == "cross":
        w = r * 0.3
        polygon([(-r, -w), (r, -w), (r, w), (-r, w)])
        polygon([(-w, -r), (w, -r), (w, r), (-w, r)])
    elif kind == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=tuple(int(c) for c in background))
    else:  # bar
        polygon([(-r, -r * 0.22), (r, -r * 0.22), (r, r * 0.22), (-r, r * 0.22)])
    small = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + rng.normal(0, 12, small.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_folder(root: Path, per_class: int, size: int, *, draw: int = 0) -> Path:
    """``root/train/<shape>/*.png`` (per_class each) and ``root/test/<shape>/*.png`` (a quarter of that), from fixed seeds;
    another ``draw`` gives other images of the same shapes."""
    marker = root / "folder.json"
    wanted = {"per_class": per_class, "size": size, "shapes": SHAPES, "version": 1, "draw": draw}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return root
    for split, count, offset in (("train", per_class, 2 * draw * 10**6), ("test", max(1, per_class // 4), (2 * draw + 1) * 10**6)):
        for label, kind in enumerate(SHAPES):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape_image(kind, size, np.random.default_rng(offset + label * 10**5 + i)).save(folder / f"{i:05d}.png")
    marker.write_text(json.dumps(wanted))
    return root


def nocollapse(*arguments: str) -> None:
    command = [sys.executable, "-m", "nocollapse", *arguments]
    print("  $ nocollapse " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def scores(run_dir: Path) -> dict[str, float]:
    rows = json.loads((run_dir / "eval.json").read_text())["rows"]
    return {row["name"]: row["knn"]["20"] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="fmnist", help="the recipe a new user starts from (default: the default preset)")
    parser.add_argument("--per-class", type=int, default=400, help="training images per shape (the test split has a quarter)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the default and the tuned recipe's runs")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--tune-epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]

    started = time.perf_counter()
    data = write_folder(args.out / "shapes", args.per_class, args.size)
    tuning = write_folder(args.out / "shapes-tuning", args.per_class, args.size, draw=1)
    # What a new user gives on their images: the folder, its size, RGB statistics of photos in general.
    settings = [f"data.image_size={args.size}", "augment.mean=0.485,0.456,0.406", "augment.std=0.229,0.224,0.225", "eval.linear_probe=false"]
    folder = ["data.dataset=image-folder", f"data.data_dir={data}", *settings]
    nocollapse("tune", "--preset", args.preset, "data.dataset=image-folder", f"data.data_dir={tuning}", *settings, "--trials", str(args.trials),
               "--budget-epochs", str(args.tune_epochs), "--out", str(args.out / "tune"))
    recipes = {"default": ["--preset", args.preset], "tuned": ["--config", str(args.out / "tune" / "best.toml")]}
    results: dict[str, list[float]] = {name: [] for name in recipes}
    raw = None
    for name, recipe in recipes.items():
        for seed in seeds:
            run = args.out / "runs" / f"{name}-seed{seed}"
            if not (run / "eval.json").is_file():
                nocollapse("train", *recipe, *folder, f"optim.epochs={args.epochs}", "optim.warmup_epochs=1", f"run.seed={seed}",
                           f"run.out_dir={run.parent}", f"run.name={run.name}", "--quiet", "--no-report")
            found = scores(run)
            raw = found.get("raw pixels", raw)
            results[name].append(list(found.values())[-1])
    tuned = json.loads(subprocess.run([sys.executable, "-m", "nocollapse", "config", "--config", str(args.out / "tune" / "best.toml"), "--json"],
                                      check=True, capture_output=True, text=True).stdout)
    from nocollapse.report.seeds import welch_p_value
    from nocollapse.train.runinfo import cpu_model

    print(f"\n# {len(SHAPES)} shapes × {args.per_class} train / {max(1, args.per_class // 4)} test images, {args.size} px — {cpu_model()}, "
          f"{(time.perf_counter() - started) / 60:.1f} min in all")
    print(f"tuned: optim.lr={tuned['optim']['lr']:.4g} method.byol.ema_base={tuned['method']['byol']['ema_base']:.4g} "
          f"augment.crop_scale={tuned['augment']['crop_scale']} optim.batch_size={tuned['optim']['batch_size']} "
          f"regularizers.uniformity={tuned['regularizers']['uniformity']:.4g}")
    print("| representation | runs | kNN k=20 (%) |\n|---|---|---|")
    print(f"| raw pixels | | {100 * raw:.2f} |" if raw is not None else "| raw pixels | | – |")
    for name, values in results.items():
        spread = f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
        print(f"| {name} recipe, {args.epochs} epochs | seeds {args.seeds} | {100 * statistics.fmean(values):.2f}{spread} |")
    p_value = welch_p_value(results["tuned"], results["default"])
    print(f"tuned against default: Welch p = {p_value:.3g}" if p_value is not None else "tuned against default: one seed, not tested")


if __name__ == "__main__":
    main()
