"""Parameter groups: a module's parameters by top-level child (plus "all"), or the groups given."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gradest.errors import GradestError
from gradest.monitor.records import ALL
from gradest.stats import check_dense

if TYPE_CHECKING:
    pass




def parameter_groups(source: nn.Module | Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """Group name -> {parameter name: tensor}, with ``"all"`` (their union) added.

    ``source``: a module (one group per top-level child module, and one per parameter of its
    own; frozen parameters left out), or a mapping group name -> a tensor, a module or an
    iterable of tensors.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    if isinstance(source, nn.Module):
        for name, p in source.named_parameters():
            if p.requires_grad:
                groups.setdefault(name.split(".")[0], {})[name] = p
    elif isinstance(source, Mapping):
        for group, value in source.items():
            if isinstance(value, torch.Tensor):
                members = {str(group): value}
            elif isinstance(value, nn.Module):
                members = {f"{group}.{n}": p for n, p in value.named_parameters() if p.requires_grad}
            elif isinstance(value, Iterable):
                members = {f"{group}.{i}": p for i, p in enumerate(value)}
            else:
                raise GradestError(f"group {group!r}: give a tensor, a module or an iterable of tensors, "
                                   f"got {type(value).__name__}")
            groups[str(group)] = members
    else:
        raise GradestError("give a module or a mapping of group name -> parameters, got "
                           f"{type(source).__name__}")
    for group, members in groups.items():
        for name, p in members.items():
            if not isinstance(p, torch.Tensor) or not p.is_floating_point():
                raise GradestError(f"parameter {name!r} of group {group!r} must be a floating-point tensor")
            check_dense(p, f"parameter {name!r} of group {group!r}",
                        "monitor the model once its parameters are materialized")
            if p.numel() == 0:
                raise GradestError(f"parameter {name!r} of group {group!r} has no numbers (shape "
                                   f"{list(p.shape)}): it has no gradient to measure; leave it out")
    groups = {g: m for g, m in groups.items() if m}
    if not groups:
        raise GradestError("no parameters to monitor (all frozen?): give tensors that require gradients")
    if ALL not in groups:
        groups[ALL] = _union(groups.values())
    return groups


def _union(groups: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every tensor once (by identity), under its first name."""
    union: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for members in groups:
        for name, p in members.items():
            if id(p) not in seen:
                seen.add(id(p))
                union[name] = p
    return union
