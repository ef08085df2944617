"""Export trained Multi-LoRA adapters as PEFT LoRA adapter directories, one per trained task.

Owns: turning the trainable tensors of a CKF model (``llm.<module>.lora_shared_A/B`` and the
stacked ``llm.<module>.lora_task_A/B``, see :mod:`ckf_dist.modules.multi_lora`) into directories
that ``peft.PeftModel.from_pretrained(base_llm, dir)`` loads as an ordinary LoRA adapter.
Must not know: DeepSpeed, Ray (the caller gathers ZeRO-3 partitions first; see
``CKFRecipe.export``).

Layout written (atomically: everything goes to a temporary sibling folder that is renamed into
place, so ``out_dir`` is either complete or absent)::

    out_dir/<task>/adapter_config.json        PEFT LoraConfig (task_type CAUSAL_LM)
    out_dir/<task>/adapter_model.safetensors  base_model.model.<module>.lora_A.weight / lora_B.weight
    out_dir/<task>/ckf_adapter.json           task, task index, ranks and scales per module set

Merge rule. A CKF layer computes, for a row of task t (dropout off)::

    y = W x + s_sh B_sh A_sh x + s_t B_t A_t x,      s = alpha / r per adapter set

while PEFT applies one LoRA per module with one scale ``lora_alpha / r``. On a module holding both
sets the two are concatenated along the rank::

    A = [A_t ; A_sh]                                  [r_t + r_sh, d_in]
    B = [ (s_t / s) B_t | (s_sh / s) B_sh ]           [d_out, r_t + r_sh]
    r = r_t + r_sh,  lora_alpha = s * r               (s = s_t: B_t is copied unchanged)

so ``s B A x = s_t B_t A_t x + s_sh B_sh A_sh x`` exactly (up to float rounding of the rescaled
block). A module with only one set keeps it as-is (its own r and alpha). Modules whose rank or
alpha differ from the adapter's default are listed in ``rank_pattern`` / ``alpha_pattern`` (keyed by
the module's last name, e.g. ``q_proj``, when all modules of that name agree, else by the escaped
full module name; PEFT matches the keys as regular expressions on the name's end). Tensors are
written in float32. Without task adapters (``lora.task_specific=false``, ``model.mapping=collm``)
every task's directory holds the shared adapter.

Not exported here: the CF mapping (meta-network, general bridge, projections, ``mapper.*``) is not
a PEFT concept. It stays in ``train/final/trainable.safetensors`` next to the adapters, and a
CKF prompt with CF placeholders needs ``CKFModel.load_trainable`` on that file; the PEFT
directories reproduce the model exactly on text-only prompts.

The base model is the LLM the run trained on (``model.path`` or ``run.dir/llm``) with the CF
placeholder token registered (``ckf_dist.models.tiny.load_llm``); ``base_model_name_or_path``
records that path.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ckf_dist.config import ALL_TASKS, Config, ConfigError
from ckf_dist.fsutil import replace_dir, temp_dir_beside

_SUFFIXES = ("lora_shared_A", "lora_shared_B", "lora_task_A", "lora_task_B")


@dataclass
class _ModuleLoRA:
    """The adapter tensors of one wrapped module (None where the set is absent)."""

    shared_A: Optional[torch.Tensor] = None  # [r_sh, d_in]
    shared_B: Optional[torch.Tensor] = None  # [d_out, r_sh]
    task_A: Optional[torch.Tensor] = None  # [T, r_t, d_in]
    task_B: Optional[torch.Tensor] = None  # [T, d_out, r_t]


def _module_path(prefix: str) -> str:
    """CKF parameter prefix -> module path inside the base LLM ("llm.model.layers.0..." -> "model.layers.0...")."""
    for head in ("module.", "llm."):
        if prefix.startswith(head):
            prefix = prefix[len(head):]
    return prefix


def collect_modules(trainable: dict[str, torch.Tensor]) -> dict[str, _ModuleLoRA]:
    """Group ``*.lora_{shared,task}_{A,B}`` tensors by module path (inside the LLM); others ignored."""
    mods: dict[str, _ModuleLoRA] = {}
    for name, t in trainable.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf not in _SUFFIXES:
            continue
        if t.numel() == 0:
            raise ValueError(f"{name}: empty tensor (a ZeRO-3 partition?): gather the parameters before exporting")
        m = mods.setdefault(_module_path(prefix), _ModuleLoRA())
        setattr(m, leaf[len("lora_"):], t.detach().to("cpu", torch.float32))
    for path, m in mods.items():
        for kind in ("shared", "task"):
            a, b = getattr(m, f"{kind}_A"), getattr(m, f"{kind}_B")
            if (a is None) != (b is None):
                raise ValueError(f"{path}: lora_{kind}_A and lora_{kind}_B must both be present")
    return mods


def _merged(m: _ModuleLoRA, t: int, s_sh: float, s_t: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """PEFT (A [r, d_in], B [d_out, r], scale) for task index t on one module."""
    parts_a, parts_b, scales = [], [], []
    if m.task_A is not None:
        if not 0 <= t < m.task_A.shape[0]:
            raise ValueError(f"task index {t} outside the {m.task_A.shape[0]} stacked task adapters")
        parts_a.append(m.task_A[t])
        parts_b.append(m.task_B[t])
        scales.append(s_t)
    if m.shared_A is not None:
        parts_a.append(m.shared_A)
        parts_b.append(m.shared_B)
        scales.append(s_sh)
    s = scales[0]
    a = torch.cat(parts_a, 0)
    b = torch.cat([bb if sc == s else bb * (sc / s) for bb, sc in zip(parts_b, scales)], 1)
    return a.contiguous(), b.contiguous(), s


def _scales(cfg: Config, mods: dict[str, _ModuleLoRA]) -> tuple[float, float]:
    """(s_sh, s_t) from the config, checking the tensors' ranks against it."""
    sh, tk = cfg.lora.shared, cfg.lora.task
    for path, m in mods.items():
        if m.shared_A is not None and m.shared_A.shape[0] != sh.r:
            raise ConfigError(f"lora.shared.r: config says {sh.r} but {path} has rank {m.shared_A.shape[0]}")
        if m.task_A is not None and m.task_A.shape[1] != tk.r:
            raise ConfigError(f"lora.task.r: config says {tk.r} but {path} has rank {m.task_A.shape[1]}")
    return float(sh.alpha) / sh.r, float(tk.alpha) / tk.r


def _fmt(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _patterns(values: dict[str, float], default: float) -> dict[str, float]:
    """PEFT rank/alpha pattern for modules whose value differs from ``default``.

    Keyed by the module's last name (``q_proj``) when every module of that name has the same
    value (PEFT matches ``(.*\\.)?(key)$``), else by the escaped full module name.
    """
    by_leaf: dict[str, set] = {}
    for path, v in values.items():
        by_leaf.setdefault(path.rpartition(".")[2], set()).add(v)
    out: dict[str, float] = {}
    for path, v in sorted(values.items()):
        leaf = path.rpartition(".")[2]
        if v == default:
            continue
        if len(by_leaf[leaf]) == 1:
            out[leaf] = v
        else:
            out[re.escape(path)] = v
    return out


def export_peft_adapters(trainable: dict[str, torch.Tensor], cfg: Config, out_dir: str | Path,
                         base_model: str | Path | None = None) -> list[Path]:
    """Write one PEFT LoRA adapter directory per task in ``cfg.tasks``; returns their paths.

    Args:
      trainable: name -> full (gathered) CPU tensor of the model's trainable parameters, as named
        by ``CKFModel.trainable_named_parameters()`` (``llm.<module>.lora_*``; ``mapper.*`` and
        any other non-LoRA tensor is ignored: the CF mapping stays in trainable.safetensors).
      cfg: the run's Config (``tasks``, ``lora`` ranks/alphas/dropouts).
      out_dir: the folder to (re)create; ``out_dir/<task>/`` per task, written atomically.
      base_model: the base LLM's directory, written as ``base_model_name_or_path``; default
        ``model.path`` (a run on the embedded tiny LLM has none and must pass its directory).

    Loading: ``PeftModel.from_pretrained(load_llm(base_dir, placeholder)[0], out_dir / task)``.
    See the module docstring for the merge of the shared and task adapters.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    if base_model is None:
        if not cfg.model.path:
            raise ValueError("export: model.path is unset (embedded tiny LLM): pass base_model, the LLM's directory")
        base_model = cfg.model.path
    out = Path(out_dir)
    mods = collect_modules(trainable)
    if not mods:
        raise ValueError("export: no Multi-LoRA tensors (*.lora_shared_A / *.lora_task_A) among the trainable parameters")
    s_sh, s_t = _scales(cfg, mods)
    has_task = any(m.task_A is not None for m in mods.values())
    dropout = cfg.lora.task.dropout if has_task else cfg.lora.shared.dropout

    tmp = temp_dir_beside(out)
    written: list[str] = []
    try:
        for task in cfg.tasks:
            t = ALL_TASKS.index(task)
            tensors: dict[str, torch.Tensor] = {}
            ranks: dict[str, int] = {}
            alphas: dict[str, float] = {}
            for path in sorted(mods):
                a, b, s = _merged(mods[path], t, s_sh, s_t)
                key = f"base_model.model.{path}"
                tensors[f"{key}.lora_A.weight"] = a
                tensors[f"{key}.lora_B.weight"] = b
                ranks[path] = int(a.shape[0])
                alphas[path] = s * a.shape[0]
            r0 = Counter(ranks.values()).most_common(1)[0][0]
            alpha0 = Counter(alphas.values()).most_common(1)[0][0]
            lcfg = LoraConfig(
                r=r0,
                lora_alpha=_fmt(alpha0),
                target_modules=sorted(mods),
                lora_dropout=float(dropout),
                bias="none",
                task_type="CAUSAL_LM",
                rank_pattern=_patterns(ranks, r0),
                alpha_pattern={k: _fmt(v) for k, v in _patterns(alphas, alpha0).items()},
                inference_mode=True,
                base_model_name_or_path=str(base_model),
            )
            d = tmp / task
            d.mkdir()
            lcfg.save_pretrained(str(d))
            save_file(tensors, str(d / "adapter_model.safetensors"), metadata={"format": "pt"})
            (d / "ckf_adapter.json").write_text(json.dumps({
                "task": task,
                "task_index": t,
                "shared": {"r": cfg.lora.shared.r, "alpha": cfg.lora.shared.alpha, "scale": s_sh},
                "task_specific": {"r": cfg.lora.task.r, "alpha": cfg.lora.task.alpha, "scale": s_t} if has_task else None,
                "modules": {p: {"shared": mods[p].shared_A is not None, "task": mods[p].task_A is not None} for p in sorted(mods)},
                "cf_mapping": "not included: see trainable.safetensors (mapper.*)",
            }, indent=2))
            written.append(task)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / task for task in written]
