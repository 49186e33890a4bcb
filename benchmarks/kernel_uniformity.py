"""Kernel uniformity against the two naive forms it generalises: time and peak memory (SPEC §4).

For each batch size N and embedding dimension q, on the same inputs (z ~ N(0, I), N × q, float32),
one forward + backward of

- ``naive-gram``: φ(ẑẑᵀ).mean() through autograd, the whole N × N kernel matrix at once (the usual
  MMD / uniformity code);
- ``naive-cov``: C = ẑᵀẑ/N, then b₂·q/(q−1)·‖C − I/q‖² through autograd (the VICReg / Barlow Twins
  form; degree 2 only);
- ``ours``: ``kernel_uniformity(path="auto")``; the path it chose is shown.

Kernels: ``deg2`` is SFRIK's degree-2 term 40·P₂ alone, for which all three forms compute the same
number (the like-for-like comparison); ``sfrik`` is the full (1, 40, 40), which the covariance form
cannot express (naive Gram against ours).

Every case runs in a fresh subprocess, so one case's allocations cannot hide another's. Time: the
median of ``--repeats`` forward + backward runs after one warm-up. Peak memory: one more run, after
those, measured as what it added — on CPU the child's peak resident set size (VmHWM, reset through
/proc/self/clear_refs just before the run, with glibc told to hand freed blocks back to the OS)
minus its resident size at that moment; on CUDA ``torch.cuda.max_memory_allocated()`` minus the
memory allocated before. The input's gradient is included. (tracemalloc would not see torch's
allocations.) A "≤" marks a CPU peak that could not be isolated, an upper bound. Cases whose
estimated memory exceeds ``--memory-gib`` (default: 90% of what is available) are skipped, not run.

    python benchmarks/kernel_uniformity.py --n 256 --q 256 2048            # a quick check
    python benchmarks/kernel_uniformity.py                                  # the full table (CPU: long)
    python benchmarks/kernel_uniformity.py --device cuda --repeats 10
    python benchmarks/kernel_uniformity.py --kernels deg2 --max-tflop 2     # skip cases over 2 TFLOP
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from nocollapse.losses.kernels import SFRIK_KERNEL, GegenbauerKernel, kernel_uniformity, kernel_uniformity_path

KERNELS = {"deg2": GegenbauerKernel((0.0, 40.0)), "sfrik": SFRIK_KERNEL}
FORMS = ("naive-gram", "naive-cov", "ours")
BLOCK_SIZE = 1024  # kernel_uniformity's default


def naive_gram(z: torch.Tensor, kernel: GegenbauerKernel) -> torch.Tensor:
    u = F.normalize(z, dim=-1)
    return kernel(u @ u.T, z.shape[1]).mean()


def naive_cov(z: torch.Tensor, kernel: GegenbauerKernel) -> torch.Tensor:
    u = F.normalize(z, dim=-1)
    num, dim = u.shape
    cov = u.T @ u / num
    return kernel.weight(2) * dim / (dim - 1) * (cov - torch.eye(dim, device=z.device) / dim).square().sum()


def ours(z: torch.Tensor, kernel: GegenbauerKernel) -> torch.Tensor:
    return kernel_uniformity(z, kernel)


FUNCTIONS = {"naive-gram": naive_gram, "naive-cov": naive_cov, "ours": ours}


def estimate(form: str, kernel_name: str, num: int, dim: int) -> tuple[float, float]:
    """(bytes, multiply-adds) of one forward + backward, roughly: to skip what cannot fit or finish."""
    kernel = KERNELS[kernel_name]
    inputs = 4 * num * dim  # z, its gradient, ẑ and the gradient of ẑ
    if form == "ours":
        form = "naive-cov" if kernel_uniformity_path((num, dim), kernel) == "moments" else "ours-gram"
    if form == "naive-gram":  # G and the saved polynomial terms, each N × N
        return 4 * (inputs + (4 + 3 * kernel.degree) * num**2), 3 * num**2 * dim
    if form == "naive-cov":  # C, C − I/q and their gradients, each q × q (T, q³, for degree 3)
        extra = 4 * dim**2 + (3 * dim**3 if kernel.degree >= 3 else 0)
        return 4 * (inputs + extra), 3 * num * dim**2 + (4 * num * dim**3 if kernel.degree >= 3 else 0)
    # ours on the Gram path: the (N, q) gradient and ~9 (block, N) tiles
    return 4 * (inputs + num * dim + 9 * min(BLOCK_SIZE, num) * num), 2 * num**2 * dim


def _release_freed_memory_to_the_os() -> bool:
    """Make glibc return every freed block over 128 KiB to the OS from now on, and trim what it holds.

    By default glibc keeps freed blocks of up to 32 MiB for reuse, so the resident size would count
    a previous run's freed buffers as this run's. False where glibc is not there to ask.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # mallopt's parameter number, from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024)) and libc.malloc_trim(0) >= 0
    except (OSError, AttributeError):
        return False


def _memory_kib(field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process."""
    return int(re.search(rf"{field}:\s+(\d+)", open("/proc/self/status").read()).group(1))


def _forward_backward(function, z: torch.Tensor, kernel: GegenbauerKernel) -> tuple[float, float]:
    """(seconds, value) of one forward + backward."""
    z.grad = None
    started = time.perf_counter()
    value = function(z, kernel)
    value.backward()
    if z.device.type == "cuda":
        torch.cuda.synchronize(z.device)
    return time.perf_counter() - started, value.item()


def run_case(case: dict) -> dict:
    """Runs in the child: the time of one form on one input, then its peak memory in one more run.

    The memory run comes after the timed ones, so one-time costs (thread pools, autograd engine) are
    left out: it measures what a training step adds.
    """
    device = torch.device(case["device"])
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    generator = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(case["n"], case["q"], device=device, generator=generator).requires_grad_()
    function, kernel = FUNCTIONS[case["form"]], KERNELS[case["kernel"]]
    times = [_forward_backward(function, z, kernel)[0] for _ in range(1 + case["repeats"])][1:]  # after a warm-up
    z.grad = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _, value = _forward_backward(function, z, kernel)
        peak, exact = torch.cuda.max_memory_allocated(device), True
    else:
        exact = _release_freed_memory_to_the_os()
        before = _memory_kib("VmRSS") * 1024
        try:  # reset the peak resident size to the current one, so the peak is this run's
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
        except OSError:  # then the peak may be an earlier one: an upper bound
            exact = False
        _, value = _forward_backward(function, z, kernel)
        peak = _memory_kib("VmHWM") * 1024
    return {"seconds": statistics.median(times), "peak_bytes": max(peak - before, 0), "exact_peak": exact, "value": value,
            "path": kernel_uniformity_path(z.shape, kernel) if case["form"] == "ours" else ""}


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    return int(re.search(r"MemAvailable:\s+(\d+)", open("/proc/meminfo").read()).group(1)) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[256, 1024, 2048], help="batch sizes N")
    parser.add_argument("--q", type=int, nargs="+", default=[256, 2048, 8192, 32768], help="embedding dimensions q")
    parser.add_argument("--kernels", nargs="+", choices=sorted(KERNELS), default=["deg2", "sfrik"])
    parser.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case, after one warm-up")
    parser.add_argument("--threads", type=int, default=0, help="torch threads in each case (0: torch's default)")
    parser.add_argument("--memory-gib", type=float, default=None, help="skip cases estimated above this (default: 90%% of available)")
    parser.add_argument("--max-tflop", type=float, default=None, help="skip cases estimated above this many TFLOP per run")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process, print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    forms = [form for form in FORMS if form in args.forms]  # naive first: "ours" is compared with them
    limit = args.memory_gib * 2**30 if args.memory_gib else 0.9 * available_bytes(args.device)
    print(f"device {args.device}, torch {torch.__version__}, {args.threads or torch.get_num_threads()} threads; "
          f"median of {args.repeats} forward+backward runs after a warm-up; peak = memory added by the case; "
          f"memory limit {limit / 2**30:.1f} GiB\n")
    print("| kernel | N | q | form | path | ms | peak MiB | time / best naive | Ψ |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|")
    for kernel_name in args.kernels:
        for num in args.n:
            for dim in args.q:
                results = {}
                for form in forms:
                    if form == "naive-cov" and KERNELS[kernel_name].degree > 2:
                        continue  # the covariance form has no degree-3 term
                    needed, multiply_adds = estimate(form, kernel_name, num, dim)
                    row = f"| {kernel_name} | {num} | {dim} | {form} |"
                    if needed > limit:
                        print(f"{row} | skipped: would need {needed / 2**30:.1f} GiB | | | |")
                        continue
                    if args.max_tflop is not None and 2 * multiply_adds / 1e12 > args.max_tflop:
                        print(f"{row} | skipped: ~{2 * multiply_adds / 1e12:.1f} TFLOP | | | |")
                        continue
                    case = {"form": form, "kernel": kernel_name, "n": num, "q": dim, "device": args.device,
                            "repeats": args.repeats, "threads": args.threads}
                    child = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
                    if child.returncode != 0:
                        print(f"{row} | failed: {child.stderr.strip().splitlines()[-1] if child.stderr.strip() else child.returncode} | | | |")
                        continue
                    results[form] = result = json.loads(child.stdout.strip().splitlines()[-1])
                    naive = [r["seconds"] for f, r in results.items() if f != "ours"]
                    ratio = f"{result['seconds'] / min(naive):.2f}" if form == "ours" and naive else ""
                    peak = f"{'' if result['exact_peak'] else '≤ '}{result['peak_bytes'] / 2**20:.0f}"
                    print(f"{row} {result['path']} | {1000 * result['seconds']:.1f} | {peak} | {ratio} | {result['value']:.5g} |", flush=True)


if __name__ == "__main__":
    main()
