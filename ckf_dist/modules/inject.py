"""Wrap the target linear layers of an HF causal LM with :class:`MultiLoRALinear`.

Owns: finding the target modules by name suffix, replacing them in place, freezing everything
that is not an adapter. Must not know: CKF, the data, DeepSpeed.

Works on any model whose projections are ``nn.Linear`` submodules (LLaMA, Qwen2, Mistral and
most decoder-only HF models: ``...self_attn.q_proj``, ``...mlp.down_proj``). The model class is
not patched: only module instances are replaced, so two models in one process are independent.
"""

from __future__ import annotations

from torch import nn

from ckf_dist.config import ConfigError, LoRAConfig
from ckf_dist.modules.multi_lora import LoRAContext, MultiLoRALinear


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def inject_multi_lora(model: nn.Module, lora_cfg: LoRAConfig, num_tasks: int, ctx: LoRAContext,
                      row_codes: int = 0) -> list[str]:
    """Wrap ``model``'s target linears in place; returns the wrapped module names (sorted).

    - ``lora_cfg.shared.targets`` get the task-shared set (rank/alpha/dropout of ``lora.shared``).
    - ``lora_cfg.task.targets`` get ``num_tasks`` stacked task sets (``lora.task``), selected per
      row through ``ctx`` (see :mod:`ckf_dist.modules.multi_lora`).
    - A module in both lists holds both sets, summed (their dropouts must match).
    - Without task adapters (``lora.task_specific=false`` or ``num_tasks == 0``) the shared set is
      placed on the union of both target lists: the ablation removes task *specificity*, not
      adapted modules, so it stays comparable with full CKF.

    - ``row_codes`` > 0 (``model.mapping=cora``): every module of both target lists gets a
      generated per-row adapter instead (rank, alpha and dropout of ``lora.task``, codes of width
      ``row_codes``), and no stored adapter: the LLM stays frozen.

    Every parameter of ``model`` is frozen first; only the new ``lora_*`` parameters train.
    A target suffix that matches no ``nn.Linear`` is a one-line ConfigError.
    """
    if any(isinstance(m, MultiLoRALinear) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} already holds MultiLoRALinear layers")
    task_on = bool(lora_cfg.task_specific) and num_tasks > 0 and bool(lora_cfg.task.targets) and not row_codes
    if task_on and ctx.num_tasks != num_tasks:
        raise ValueError(f"ctx.num_tasks={ctx.num_tasks} but num_tasks={num_tasks}")
    shared_targets = list(lora_cfg.shared.targets)
    task_targets = list(lora_cfg.task.targets) if task_on else []
    if not task_on:
        shared_targets += [t for t in lora_cfg.task.targets if t not in shared_targets]

    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for key, targets in (("lora.shared.targets", shared_targets), ("lora.task.targets", task_targets)):
        for t in targets:
            if not any(_matches(n, t) for n in linears):
                raise ConfigError(f"config: key '{key}': {t!r} matches no nn.Linear in {type(model).__name__}")

    for p in model.parameters():
        p.requires_grad_(False)

    s, tk = lora_cfg.shared, lora_cfg.task
    wrapped = []
    for name, lin in linears.items():
        want_shared = any(_matches(name, t) for t in shared_targets)
        want_task = any(_matches(name, t) for t in task_targets)
        if not (want_shared or want_task):
            continue
        if row_codes:
            layer = MultiLoRALinear(lin, ctx, name=name, row=(tk.r, tk.alpha, tk.dropout, row_codes))
        else:
            layer = MultiLoRALinear(
                lin,
                ctx,
                shared=(s.r, s.alpha, s.dropout) if want_shared else None,
                task=(tk.r, tk.alpha, tk.dropout) if want_task else None,
                name=name,
            )
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        wrapped.append(name)
    return sorted(wrapped)
