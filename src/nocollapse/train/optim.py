"""Optimiser construction, in one place: parameter groups, LARS, and a by-name factory.

Usage::

    groups = split_param_groups([encoder, projector, predictor], weight_decay=1.5e-6)
    print(describe_param_groups(groups))
    opt = build_optimizer("lars", groups, lr=0.2 * batch_size / 256, weight_decay=1.5e-6)

Every method's optimiser goes through here, so the no-decay rule (``p.ndim < 2``) and the LARS maths exist
exactly once (three drifting LARS copies across the Meta SSL repositories show what happens otherwise).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from nocollapse.errors import UserError

__all__ = ["LARS", "OPTIMIZERS", "build_optimizer", "describe_param_groups", "split_param_groups"]

OPTIMIZERS: tuple[str, ...] = ("lars", "adamw", "adam", "sgd")

ParamSource = nn.Module | Iterable[nn.Module] | Iterable[tuple[str, Tensor]] | Iterable[Tensor]


def _params_of(source: ParamSource) -> list[Tensor]:
    """The parameters of a module, of modules, of ``(name, param)`` pairs or of bare parameters, in order."""
    if isinstance(source, nn.Module):
        return list(source.parameters())
    out: list[Tensor] = []
    for item in source:
        if isinstance(item, nn.Module):
            out += item.parameters()
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            out.append(item[1])
        elif isinstance(item, Tensor):
            out.append(item)
        else:
            raise TypeError(
                "split_param_groups takes a module, modules, (name, parameter) pairs or parameters; "
                f"got an item of type {type(item).__name__}"
            )
    return out


def split_param_groups(modules_or_named_params: ParamSource, *, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed, LARS-adapted group and a no-decay, LARS-excluded group.

    Rule (BYOL, SimCLR, solo-learn): tensors with ``p.ndim < 2`` — biases, BatchNorm/LayerNorm scales and
    shifts, scalars — get ``weight_decay = 0`` and ``lars_exclude = True``; weight matrices and conv kernels
    get ``weight_decay`` and ``lars_exclude = False``. Decaying a BN scale only fights the normalisation
    and adapting a bias by ``‖b‖/‖g‖`` freezes biases that start at zero, hence the exclusion.

    Parameters with ``requires_grad=False`` are skipped (frozen layers, EMA targets), and a parameter
    reached twice (a module shared by two heads) is listed once, since torch optimisers refuse duplicates.

    Args:
        modules_or_named_params: a module, an iterable of modules, of ``(name, parameter)`` pairs (as from
            ``named_parameters()``) or of bare parameters.
        weight_decay: decay of the ``"decay"`` group.

    Returns:
        Up to two groups, each ``{"name", "params", "weight_decay", "lars_exclude"}``, decay group first;
        an empty group is left out. Pass them to :func:`build_optimizer` or any torch optimiser (extra
        keys are kept in ``param_groups`` and ignored by optimisers that do not read them).
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    seen: set[int] = set()
    for p in _params_of(modules_or_named_params):
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": float(weight_decay), "lars_exclude": False},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def describe_param_groups(groups: Iterable[dict[str, Any]]) -> str:
    """One line per group: name, tensor count, parameter count, weight decay and LARS exclusion.

    Example: ``decay: 21 tensors, 11,166,912 params, weight_decay=1e-05, lars_exclude=False``.
    Works on :func:`split_param_groups` output and on ``optimizer.param_groups``.
    """
    lines = []
    for i, g in enumerate(groups):
        params = list(g["params"])
        n = sum(p.numel() for p in params)
        lines.append(
            f"{g.get('name', f'group{i}')}: {len(params)} tensors, {n:,} params, "
            f"weight_decay={g.get('weight_decay', 'default')}, lars_exclude={g.get('lars_exclude', False)}"
        )
    return "\n".join(lines)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017), as in BYOL.

    For each parameter tensor ``p`` with gradient ``g`` in a group with ``lars_exclude=False``
    (``λ`` weight decay, ``η`` trust coefficient, ``μ`` momentum, ``lr`` the group's learning rate)::

        trust_denominator="update" (default; BYOL's official JAX optimiser, optax):
            u     = g + λ p
            trust = η ‖p‖ / ‖u‖           if ‖p‖ > 0 and ‖u‖ > 0, else 1
        trust_denominator="grad_plus_decay" (You et al. eq. 6; solo-learn / Lightning Bolts):
            u     = g + λ p               if ‖p‖ > 0 and ‖g‖ > 0, else g   (no decay in the fallback)
            trust = η ‖p‖ / (‖g‖ + λ ‖p‖ + eps)   if ‖p‖ > 0 and ‖g‖ > 0, else 1   (eps = 1e-8)

        clip=True (solo-learn's ``clip_lars_lr``), only where the norms are positive:
            trust ← min(trust / lr, 1)     # per-layer rate lr·trust becomes min(η‖p‖/…, lr)

        m ← μ m + trust · u
        p ← p − lr · m

    Groups with ``lars_exclude=True`` (biases and norm parameters from :func:`split_param_groups`) are
    plain SGD with momentum and their own L2 decay (normally 0): ``m ← μ m + (g + λ p); p ← p − lr·m``.
    (solo-learn decides exclusion per tensor, ``p.ndim == 1`` with ``exclude_bias_n_norm``, and its excluded
    tensors get no decay whatever the group says; with :func:`split_param_groups` the two agree. Its LARS
    also adapts tensors of a group whose decay is 0, its docstring's warning notwithstanding; so does this
    one: only ``lars_exclude`` excludes.)
    The momentum buffer starts at zero, so the first step uses ``m = trust·u`` as in torch's SGD.

    BYOL uses ``η = 1e-3``, ``μ = 0.9``, lr = base·B/256; solo-learn's CIFAR BYOL uses ``η = 0.02``,
    ``clip=True``, ``trust_denominator="grad_plus_decay"``. Note what ``clip`` does: the trust ratio is divided
    by the *scheduled* lr of that step, so each layer's rate is ``min(η‖p‖/…, lr)`` — the lr becomes a cap
    and no longer multiplies the trust ratio. At solo-learn's peak lr = 1 the two agree wherever trust ≤ 1;
    during warm-up and cosine decay a clipped layer moves at ``min(trust, lr)``, an unclipped one at
    ``lr·trust`` — so a schedule shrinks clipped LARS only once lr falls below the layer's trust ratio.

    All tensors stay on the device: norms with ``torch._foreach_norm``, the fallback with ``torch.where``,
    no ``.item()`` (no host synchronisation per parameter). State (``momentum_buffer`` per parameter)
    round-trips through ``state_dict``/``load_state_dict``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        clip: bool = False,
        trust_denominator: Literal["update", "grad_plus_decay"] = "update",
        eps: float = 1e-8,
    ) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"eta (trust coefficient) must be > 0, got {eta}")
        if trust_denominator not in ("update", "grad_plus_decay"):
            raise ValueError(f"trust_denominator must be 'update' or 'grad_plus_decay', got {trust_denominator!r}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            clip=clip,
            trust_denominator=trust_denominator,
            eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            # Bucket by (device, dtype) so each bucket's norms stack into one vector: a handful of kernels
            # per bucket instead of several per tensor (ResNet-50 has 161 parameter tensors).
            buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params, grads, bufs = buckets.setdefault((p.device, p.dtype), ([], [], []))
                params.append(p)
                grads.append(p.grad)
                bufs.append(state["momentum_buffer"])

            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for params, grads, bufs in buckets.values():
                if group["lars_exclude"]:
                    # Plain SGD + momentum: u = g + λp.
                    updates = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
                else:
                    updates = self._adapted_updates(params, grads, group)
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, updates)  # m ← μm + u
                torch._foreach_add_(params, bufs, alpha=-lr)  # p ← p − lr·m
        return loss

    @staticmethod
    def _adapted_updates(params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
        """``trust · u`` for tensors of one device and dtype in a LARS-adapted group (class docstring)."""
        lr, wd, eta = group["lr"], group["weight_decay"], group["eta"]
        fresh = wd != 0  # a new list we may scale in place; never scale p.grad itself
        updates = torch._foreach_add(grads, params, alpha=wd) if fresh else grads  # g + λp
        p_norms = torch.stack(torch._foreach_norm(params))  # (n,)
        if group["trust_denominator"] == "update":
            u_norms = torch.stack(torch._foreach_norm(updates))  # (n,)
            ok = (p_norms > 0) & (u_norms > 0)
            trust = eta * p_norms / u_norms
            fallback = torch.ones_like(trust)
        else:
            g_norms = torch.stack(torch._foreach_norm(grads))  # (n,)
            ok = (p_norms > 0) & (g_norms > 0)
            trust = eta * p_norms / (g_norms + wd * p_norms + group["eps"])
            # solo-learn's fallback is u = g, unscaled and undecayed. Where ‖p‖ = 0, g + λp = g: factor 1.
            # Where ‖g‖ = 0 (p ≠ 0), u = g = 0 while g + λp = λp: factor 0. So the factor is [‖g‖ > 0].
            fallback = (g_norms > 0).to(trust.dtype)
        if group["clip"]:
            # min(trust/lr, 1); at lr = 0 (a warm-up's first step) trust/lr = ∞, so 1, as in solo-learn.
            trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
        # where() keeps the nan/inf of the unused branch (0/0 at zero norms) out of the result.
        scale = torch.where(ok, trust, fallback).unbind(0)  # n 0-d tensors: no host sync
        # A list of 0-d tensors takes foreach's per-tensor path (one kernel per tensor on CUDA); the rest
        # of the step is multi-tensor kernels.
        if fresh:
            torch._foreach_mul_(updates, scale)
            return updates
        return torch._foreach_mul(updates, scale)


def _fast_path(cls: type[torch.optim.Optimizer], groups: list[dict[str, Any]]) -> dict[str, bool]:
    """``{"fused": True}`` where torch has fused kernels for this optimiser and every parameter's device,
    else ``{"foreach": True}`` (multi-tensor kernels; torch < 2.4 has no fused CPU kernels, < 2.3 no fused SGD).
    """
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a private helper: absent from some torch versions
        return {"foreach": True}
    fused = "fused" in inspect.signature(cls.__init__).parameters and all(
        p.device.type in devices and torch.is_floating_point(p) for g in groups for p in g["params"]
    )
    return {"fused": True} if fused else {"foreach": True}


def build_optimizer(
    name: Literal["lars", "adamw", "adam", "sgd"],
    param_groups: list[dict[str, Any]],
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    clip: bool = False,
    trust_denominator: Literal["update", "grad_plus_decay"] = "update",
) -> torch.optim.Optimizer:
    """Build an optimiser by name over ``param_groups`` (normally from :func:`split_param_groups`).

    ``lr`` and ``weight_decay`` are defaults: a group's own ``"weight_decay"`` (0 for the no-decay group)
    wins. Decay semantics per optimiser:

    - ``"lars"``: :class:`LARS` (L2 folded into the update before the trust ratio; ``momentum``, ``eta``,
      and the LARS-only ``clip`` and ``trust_denominator``); groups' ``lars_exclude`` respected.
    - ``"adamw"``: ``torch.optim.AdamW``, decoupled decay ``p ← p − lr·λ·p``.
    - ``"adam"``: ``torch.optim.Adam``, L2 decay ``g ← g + λ p`` (W-MSE's setting).
    - ``"sgd"``: ``torch.optim.SGD`` with ``momentum`` and L2 decay.

    The torch optimisers use the fused kernels when every parameter is on a supported device, else the
    multi-tensor (foreach) path.

    Raises:
        UserError: ``name`` is not one of ``lars, adamw, adam, sgd``.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    groups = list(param_groups)
    if key == "lars":
        return LARS(
            groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            clip=clip,
            trust_denominator=trust_denominator,
        )
    if key in ("adamw", "adam"):
        # AdamW: decoupled p ← p − lr·λ·p; Adam: λp added to the gradient before the moments (L2).
        cls = torch.optim.AdamW if key == "adamw" else torch.optim.Adam
        return cls(groups, lr=lr, betas=betas, weight_decay=weight_decay, **_fast_path(cls, groups))
    sgd = torch.optim.SGD
    return sgd(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, **_fast_path(sgd, groups))
