"""Full-catalogue cross-entropy computed in chunks, gradients fused into the forward pass.

``F.cross_entropy(hidden @ item_emb.T, targets)`` materialises the (M, V) logits, a (M, V)
log-softmax for backward and a (M, V) gradient: three catalogue-wide tensors per step, each
allocated and freed again (at 12k items and M = 12,800 targets that is 600 MB apiece; at 1M items
it does not fit). ``chunked_cross_entropy`` computes the same loss and the same gradients block by
block: for each block of rows (and, for large catalogues, each column chunk) it writes the logits
into one reused workspace, takes the log-sum-exp, turns the block into its softmax gradient in
place and accumulates ``grad_hidden = P @ E`` and ``grad_emb = P.T @ H`` right away. Backward then
only scales the stored gradients. Peak extra memory is one block (``budget`` floats, 16 MiB by
default) plus the (V, D) embedding gradient, whatever the catalogue size; the matmul FLOPs are the
same as the plain path (one logits product, two gradient products) while the catalogue fits one
block row-wise, and one more logits product (a recomputation) when it must be split by columns.
"""

from __future__ import annotations

import threading

import torch

# logits per block: 4M floats = 16 MiB; small enough to stay out of glibc's mmap path churn and
# cache-friendly, large enough that each block's matmuls run at BLAS speed (bench/train_step.py)
BLOCK_ELEMENTS = 1 << 22
# rows per block below which a wide catalogue is split by columns instead (keeps GEMMs well-shaped)
MIN_BLOCK_ROWS = 256

_local = threading.local()


def workspace(n: int, like: torch.Tensor) -> torch.Tensor:
    """A flat buffer of ``n`` elements (device and dtype of ``like``), reused across calls of this
    thread: no allocation, no page faults after the first step."""
    key = (like.device, like.dtype)
    cache: dict = _local.__dict__.setdefault("buffers", {})
    buf = cache.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.empty(n, device=like.device, dtype=like.dtype)
        cache[key] = buf
    return buf[:n]


def block_shape(m: int, v: int, budget: int = BLOCK_ELEMENTS) -> tuple[int, int]:
    """(rows, columns) of one logits block for M targets over V classes within ``budget`` floats."""
    rows = min(m, max(budget // max(v, 1), 1))
    if rows >= MIN_BLOCK_ROWS or rows == m:
        return rows, v
    rows = min(m, MIN_BLOCK_ROWS)
    return rows, max(budget // rows, 1)


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        hidden: torch.Tensor,
        emb: torch.Tensor,
        targets: torch.Tensor,
        keep: torch.Tensor,
        smoothing: float,
        budget: int,
        seen: torch.Tensor | None,
    ) -> torch.Tensor:
        m, v = hidden.shape[0], emb.shape[0]
        need_h, need_e = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])  # type: ignore[attr-defined]
        h, e = hidden.detach(), emb.detach()
        rows, cols = block_shape(m, v, budget)
        buf = workspace(rows * cols, h)
        dropped = (~keep).nonzero().squeeze(1)
        n_keep = int(keep.sum())
        keep_f = keep.to(h.dtype)
        grad_h = torch.zeros_like(h) if need_h else None
        grad_e = torch.zeros_like(e) if need_e else None
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        mean_kept = (e * keep_f[:, None]).sum(0) / n_keep if smoothing else None  # (D,)
        for r0 in range(0, m, rows):
            hb, tb = h[r0 : r0 + rows], targets[r0 : r0 + rows]
            sb = seen[r0 : r0 + rows] if seen is not None else None
            n = hb.shape[0]
            mx = torch.full((n,), float("-inf"), dtype=h.dtype, device=h.device)
            ssum = torch.zeros(n, dtype=h.dtype, device=h.device)
            zt = torch.empty(n, dtype=h.dtype, device=h.device)
            single = cols >= v
            for c0 in range(0, v, cols):
                z = _logits(hb, e, c0, cols, dropped, buf, sb)
                _take_targets(z, tb, c0, zt)
                new = torch.maximum(mx, z.amax(1))
                safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
                ssum = ssum * torch.exp(mx - safe) + z.sub_(safe[:, None]).exp_().sum(1)
                mx = new
            lse = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)) + ssum.log()
            row_loss = lse - zt
            if smoothing:
                assert mean_kept is not None
                row_loss = (1 - smoothing) * row_loss + smoothing * (lse - hb @ mean_kept)
            total += row_loss.sum(dtype=torch.float64)
            if not (need_h or need_e):
                continue
            for c0 in range(0, v, cols):
                if single:  # the block still holds exp(z - max): normalise in place, no recomputation
                    p = z.div_(ssum[:, None])
                else:
                    p = _logits(hb, e, c0, cols, dropped, buf, sb).sub_(lse[:, None]).exp_()
                _softmax_grad(p, tb, c0, keep_f, smoothing, n_keep)
                c1 = c0 + p.shape[1]
                if grad_h is not None:
                    if single:
                        torch.mm(p, e, out=grad_h[r0 : r0 + n])
                    else:
                        grad_h[r0 : r0 + n].addmm_(p, e[c0:c1])
                if grad_e is not None:
                    grad_e[c0:c1].addmm_(p.T, hb)
        ctx.grads = (grad_h, grad_e, m)  # type: ignore[attr-defined]
        return (total / m).to(h.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple:
        grad_h, grad_e, m = ctx.grads  # type: ignore[attr-defined]
        del ctx.grads  # type: ignore[attr-defined]  # backward runs once (no retain_graph)
        scale = grad_out / m
        # the stored gradients belong to this call alone: scaled in place, no new (V, D) tensor
        return (
            grad_h.mul_(scale) if grad_h is not None else None,
            grad_e.mul_(scale) if grad_e is not None else None,
            None, None, None, None, None,
        )


def _logits(hb: torch.Tensor, e: torch.Tensor, c0: int, cols: int, dropped: torch.Tensor,
            buf: torch.Tensor, sb: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the block's rows against classes [c0, c0 + cols), excluded classes at -inf, and
    each row's own ``sb`` (seen) items too."""
    ec = e[c0 : c0 + cols]
    z = torch.mm(hb, ec.T, out=buf[: hb.shape[0] * ec.shape[0]].view(hb.shape[0], ec.shape[0]))
    local = dropped[(dropped >= c0) & (dropped < c0 + ec.shape[0])] - c0
    if len(local):
        z.index_fill_(1, local, float("-inf"))
    if sb is not None:
        if c0 == 0 and z.shape[1] == e.shape[0]:  # the whole catalogue: PAD's column is -inf already
            z.scatter_(1, sb, float("-inf"))
        else:
            hit = (sb >= c0) & (sb < c0 + z.shape[1]) & (sb != 0)
            rows = hit.nonzero()[:, 0]
            z[rows, sb[hit] - c0] = float("-inf")
    return z


def _in_chunk(tb: torch.Tensor, c0: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows whose target lies in columns [c0, c0 + width), those targets' local columns)."""
    rows = ((tb >= c0) & (tb < c0 + width)).nonzero().squeeze(1)
    return rows, tb[rows] - c0


def _take_targets(z: torch.Tensor, tb: torch.Tensor, c0: int, zt: torch.Tensor) -> None:
    rows, cols = _in_chunk(tb, c0, z.shape[1])
    zt[rows] = z[rows, cols]


def _softmax_grad(p: torch.Tensor, tb: torch.Tensor, c0: int, keep_f: torch.Tensor, smoothing: float,
                  n_keep: int) -> None:
    """p (softmax probabilities) -> d loss / d logits, in place: p - (1 - eps) onehot - eps / K kept."""
    rows, cols = _in_chunk(tb, c0, p.shape[1])
    p[rows, cols] -= 1.0 - smoothing
    if smoothing:
        p.sub_(keep_f[c0 : c0 + p.shape[1]] * (smoothing / n_keep))


def chunked_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    item_emb: torch.Tensor,
    keep: torch.Tensor,
    label_smoothing: float = 0.0,
    budget: int = BLOCK_ELEMENTS,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ item_emb.T`` over the classes where ``keep`` is True
    (with ``label_smoothing`` spread over those classes only), equal to ``F.cross_entropy`` on the
    kept columns; computed in fp32 (outside autocast) one block of at most ``budget`` logits at a
    time. hidden (M, D), targets (M,) kept class ids, item_emb (V, D), keep (V,) bool; seen: optional
    (M, S) class ids also left out of each row's softmax (0 = none)."""
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        out: torch.Tensor = _ChunkedCE.apply(hidden.float(), item_emb.float(), targets, keep.to(hidden.device),
                                             float(label_smoothing), int(budget),
                                             None if seen is None else seen.to(hidden.device))
    return out
