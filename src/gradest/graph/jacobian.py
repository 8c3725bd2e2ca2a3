"""Per-row Jacobians of a graph's rows (forward or reverse, in chunks), and the guard that
refuses a second derivative through a first-order node."""

from __future__ import annotations

import torch

from gradest.errors import GradestError

#: rows of the identity handed to one batched backward pass in :meth:`Graph.per_node`
CHUNK = 512


#: > 0 while jacobian_rows runs (a plain counter, not a context variable: autograd may run backward
#: functions on its device threads, which do not see the caller's context)
_JACOBIAN_DEPTH = [0]


class _FirstOrderOnly(torch.autograd.Function):
    """Identity whose backward refuses to build a graph (``create_graph=True``, a second derivative),
    except inside :func:`jacobian_rows`, whose backward-through-backward yields first derivatives."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, name: str) -> torch.Tensor:
        ctx.node = name
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if torch.is_grad_enabled() and not _JACOBIAN_DEPTH[0]:
            raise GradestError(
                f"node {ctx.node!r} gives first derivatives only (its estimator's hook returns a detached "
                "estimate), so a second derivative through it would be wrong; differentiate once "
                "(no create_graph=True), or use 'enumerate' or 'score-loo' for that node")
        return grad, None


def jacobian_rows(rows: torch.Tensor, targets: list[torch.Tensor], mode: str | None = None
                  ) -> list[torch.Tensor]:
    """∂rows_r/∂target for every row r: ``[R, *target.shape]`` each.

    ``"reverse"``: one backward pass per row, batched (``is_grads_batched``), O(R) passes;
    ``"forward"``: one Jacobian-vector product per parameter coordinate, J e_j = ∂⟨J^T u, e_j⟩/∂u
    (a backward pass through the backward pass, linear in u), O(Σ numel) passes. Default: the one
    with fewer passes. Either way the passes run in chunks of ``CHUNK``.
    """
    _JACOBIAN_DEPTH[0] += 1
    try:
        return _jacobian_rows(rows, targets, mode)
    finally:
        _JACOBIAN_DEPTH[0] -= 1


def _jacobian_rows(rows: torch.Tensor, targets: list[torch.Tensor], mode: str | None) -> list[torch.Tensor]:
    sizes = [t.numel() for t in targets]
    r, d = rows.shape[0], sum(sizes)
    if not rows.requires_grad:  # nothing in the rows depends on the targets
        return [torch.zeros(r, *t.shape, dtype=t.dtype, device=t.device) for t in targets]
    mode = mode or ("forward" if d < r else "reverse")
    if mode == "forward":
        u = torch.zeros_like(rows, requires_grad=True)
        vjp = torch.autograd.grad(rows, targets, u, retain_graph=True, create_graph=True, allow_unused=True)
        linear = [(g, t) for g, t in zip(vjp, targets, strict=True) if g is not None and g.requires_grad]
        columns = []
        for start in range(0, d, CHUNK):
            stop = min(start + CHUNK, d)
            eye = torch.zeros(stop - start, d, dtype=rows.dtype, device=rows.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            if not linear:
                columns.append(torch.zeros(stop - start, r, dtype=rows.dtype, device=rows.device))
                continue
            tangents = dict(zip((id(t) for t in targets), eye.split(sizes, dim=1), strict=True))
            (jv,) = torch.autograd.grad(
                [g for g, _ in linear], u,
                [tangents[id(t)].reshape(stop - start, *t.shape) for _, t in linear],
                retain_graph=True, allow_unused=True, is_grads_batched=True)
            columns.append(torch.zeros(stop - start, r, dtype=rows.dtype, device=rows.device)
                           if jv is None else jv)
        jac = torch.cat(columns).T  # [R, d]
        if not _sums_agree(rows, targets, jac):
            # a backward that cannot be differentiated (torch's implicit Beta/Dirichlet gradient is
            # once_differentiable) drops out of the backward-through-backward: one backward pass
            # per row instead
            return _jacobian_rows(rows, targets, "reverse")
        return [part.reshape(r, *t.shape) for part, t in zip(jac.split(sizes, dim=1), targets, strict=True)]
    if mode != "reverse":
        raise GradestError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    parts: list[list[torch.Tensor]] = [[] for _ in targets]
    for start in range(0, r, CHUNK):
        stop = min(start + CHUNK, r)
        eye = torch.zeros(stop - start, r, dtype=rows.dtype, device=rows.device)
        eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        grads = torch.autograd.grad(rows, targets, eye, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
        for k, (g, t) in enumerate(zip(grads, targets, strict=True)):
            parts[k].append(torch.zeros(stop - start, *t.shape, dtype=t.dtype, device=t.device)
                            if g is None else g)
    return [torch.cat(p) for p in parts]


def _sums_agree(rows: torch.Tensor, targets: list[torch.Tensor], jac: torch.Tensor) -> bool:
    """Whether the Jacobian's column sums are ∇ Σ_r rows_r, from one plain backward pass (the check
    that the forward-mode trick saw every path)."""
    grads = torch.autograd.grad(rows.sum(), targets, retain_graph=True, allow_unused=True,
                                materialize_grads=True)
    whole = torch.cat([g.reshape(-1) for g in grads]).to(jac.dtype)
    summed = jac.sum(0)
    scale = float(jac.abs().sum(0).max()) if jac.numel() else 0.0
    top = float(whole.abs().max()) if whole.numel() else 0.0
    tol = 1024 * torch.finfo(jac.dtype).eps * (scale + top + 1e-300)
    return bool(((summed - whole).abs() <= tol).all())
