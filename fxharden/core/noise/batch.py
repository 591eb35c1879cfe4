"""Batch groups at a noise site: one sigma per group of the batch (the sweep measures several
noise settings in one forward pass), the eager paths that apply them (``BatchGroups``, a part
of ``Noise``), and how a site's tensors relate to the batch.

Group ``r`` is the ``r``-th of ``R`` equal slices of the batch dimension at the site, which
``fxharden.core.groups.locate_batch_dims`` finds (not always dim 0: sequence-first layers put
the batch in dim 1). On activations every group gets its own draw; on weights
(``draw_weights``) each group gets its own perturbed copy of the weight. A site whose tensor
the batch shares (a position embedding, ``(1, L, E)``) gets one copy per group, each with its
own sigma and draw, repeated for the group's rows (``broadcast``). Groups whose sigma is 0 draw
nothing; groups with the same draw index (``set_sigma(..., draws=...)``) share one draw."""

from __future__ import annotations

from enum import Enum
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["GroupDimError", "GROUPS_HINT", "BatchBroadcast", "expand_batch", "BatchGroups"]


class GroupDimError(ValueError):
    """A per-group sigma was used at a site whose batch dimension is not known."""


GROUPS_HINT = ("measure one sigma value per forward pass (fxharden sweep or budget --points-per-forward 1; in "
               "Python SweepConfig(points_per_forward=1)), or leave this site out (fxharden sweep --sites)")
"""How to avoid batch groups, named in every error that refuses them."""


class BatchBroadcast(str, Enum):
    """How the tensors of a site without a batch dimension broadcast against the batch later
    (found by ``groups.locate_batch_dims``; e.g. a position embedding looked up on position
    ids that the whole batch shares)."""

    LEADING_ONE = "leading-one"
    """Dim 0 has size 1 whatever the batch: ``(1, L, E)`` added to ``(N, L, E)``."""
    NO_BATCH_DIM = "no-batch-dim"
    """No dimension for the batch: ``(L, E)`` added to ``(N, L, E)``."""


def expand_batch(x: Tensor, how: BatchBroadcast, size: int) -> Tensor:
    """``x`` (a site's tensor that broadcasts against the batch as ``how`` says) as a view with
    a batch of ``size`` in dim 0."""
    if how is BatchBroadcast.NO_BATCH_DIM:
        x = x.unsqueeze(0)
    return x.expand(size, *x.shape[1:])


class BatchGroups:
    """The batch-group part of ``Noise``: where the groups lie in a tensor, and the eager
    paths that give each group its sigma (and its draw)."""

    unbatched = ""
    """Why the tensors at this site hold no batch dimension even where one dimension grows with
    the batch (rows regrouped by expert inside a mixture-of-experts layer); '' when they may."""
    broadcast: Optional[BatchBroadcast] = None
    """Set by ``locate_batch_dims`` at a site whose tensors have no batch dimension but broadcast
    against the batch later: with one sigma per batch group the tensor is expanded to one copy
    per group (each with its own sigma and draw, shared by the group's rows, as when the group
    runs alone) and then to the batch (``broadcast_batch`` rows)."""
    broadcast_batch = 0
    """The batch size of the current forward at a ``broadcast`` site (``ensure_batch_dims``)."""

    def observe(self, x: Tensor) -> bool:
        """While batch dims are located: record the shape of ``x`` (a batched tensor at this
        site) and return True; otherwise return False."""
        if self._record is None:
            return False
        if isinstance(x, Tensor):
            self._record.append(tuple(x.shape))
        return True

    def group_dim(self, x: Tensor) -> int:
        """The dimension of ``x`` that holds the batch, checked to split into the groups."""
        error = self._group_error(x)
        if error is not None:
            raise error
        return self.batch_dim

    def _group_error(self, x: Tensor) -> Optional[GroupDimError]:
        """Why ``x`` cannot be split into the groups along the batch dimension, or ``None``."""
        dim, groups = self.batch_dim, self.groups
        if self.unbatched:
            return GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values (one per batch group) but {self.unbatched}. "
                "Measure one sigma value per forward pass (sweep: points_per_forward=1), or exclude this site")
        if dim is None or dim >= x.dim():
            return GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values (one per batch group) but the batch "
                f"dimension of its {tuple(x.shape)} tensors is not known: the site's tensors have no "
                "dimension that follows the batch size and they do not simply broadcast against the batch; "
                + GROUPS_HINT)
        if x.shape[dim] % groups:
            return GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values but the batch of {x.shape[dim]} "
                f"(dim {dim} of {tuple(x.shape)}) does not split into {groups} equal groups; "
                "use a batch size divisible by the number of sigma values")
        return None

    def _broadcast_error(self) -> Optional[GroupDimError]:
        """At a ``broadcast`` site: why the batch does not split into the groups, or ``None``."""
        batch, groups = self.broadcast_batch, self.groups
        if batch < 1 or batch % groups:
            return GroupDimError(
                f"noise site {self.site!r} has {groups} sigma values but the batch of {batch} does not split "
                f"into {groups} equal groups; use a batch size divisible by the number of sigma values")
        return None

    def _grouped_broadcast(self, x: Tensor) -> Tensor:
        """Per-group noise at a ``broadcast`` site: one copy of ``x`` per group (its sigma, its
        draw), each repeated for the group's rows: the batch the tensor broadcasts against."""
        error = self._broadcast_error()
        if error is not None:
            raise error
        rows = self.broadcast_batch // self.groups
        copies = expand_batch(x, self.broadcast, self.groups).contiguous()  # a new tensor, ours alone
        y = self._grouped(copies, 0, fresh=not (torch.is_grad_enabled() and x.requires_grad))
        return y.repeat_interleave(rows, 0) if rows > 1 else y

    def _grouped(self, x: Tensor, dim: int, fresh: bool) -> Tensor:
        """Noise on ``x`` whose dim ``dim`` holds the groups: group ``r`` gets ``sigma[r]``;
        groups with sigma 0 draw nothing, groups with the same draw index share their draw.
        Without autograd the groups are written into one output (``x`` itself when ``fresh``:
        an upcast copy that nobody else holds)."""
        per = x.shape[dim] // self.groups
        grad = torch.is_grad_enabled() and x.requires_grad
        out = None if grad else (x if fresh else torch.empty_like(x))
        eps: Dict[int, Tensor] = {}
        parts: List[Tensor] = []
        rms = self._rms()
        for r, (s, d) in enumerate(zip(self._host, self._group_draws())):
            xr = x.narrow(dim, r * per, per)
            o = None if out is None else out.narrow(dim, r * per, per)
            if s == 0:
                if o is None:
                    parts.append(xr)
                elif out is not x:
                    o.copy_(xr)
                continue
            if d not in eps:  # consumed within this call: drawn into a reused buffer
                eps[d] = self.stream.draw(self.model.draw, xr.shape, x.device, x.dtype, slot=len(eps))
            part = self.model.apply(xr, self._own(eps[d]), s, rms, out=o)
            if o is None:
                parts.append(part)
        return torch.cat(parts, dim) if grad else out

    def draw_weights(self, w: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
        """One perturbed copy of weight ``w`` per batch group: ``w`` itself where sigma is 0;
        groups with the same draw index share one draw, each scaled by its own sigma, and
        groups with the same draw index, sigma and input get the very same tensor (so a layer
        can run them in one call). ``w`` may already be one weight per group (the previous
        model of a ``NoiseChain``); a single sigma then applies to every group, one draw each."""
        host, draws = self._host, self._group_draws()
        ws = list(w) if isinstance(w, (list, tuple)) else [w] * len(host)
        if len(host) == 1 and len(ws) > 1:
            host, draws = host * len(ws), tuple(range(len(ws)))
        if len(host) != len(ws):
            raise ValueError(f"noise site {self.site!r}: {len(host)} sigma values for {len(ws)} weight groups")
        if self.model.needs_rms and not self.calibrated:
            raise self._uncalibrated()
        if self.model.needs_out_scale and not self.has_out_scale:
            raise self._no_out_scale()
        eps: Dict[int, Tensor] = {}
        made: Dict[Tuple[float, int, int], Tensor] = {}
        out = []
        rms = self._rms()
        for wi, s, d in zip(ws, host, draws):
            if s == 0:
                out.append(wi)
                continue
            if (s, d, id(wi)) not in made:
                if d not in eps:
                    eps[d] = self.stream.draw(self.model.draw, wi.shape, wi.device, wi.dtype)
                made[(s, d, id(wi))] = self.model.apply(wi, self._own(eps[d]), s, rms, **self._model_kw())
            out.append(made[(s, d, id(wi))])
        return out

    def _own(self, eps: Tensor) -> Tensor:
        """``eps`` as the model may consume it: a copy where it would be changed in place."""
        return eps.clone() if self.model.consumes_draw else eps
