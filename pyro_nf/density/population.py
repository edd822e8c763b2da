r"""Populations: :math:`R` copies of one flow trained side by side, for multi-start fitting.

A population holds :math:`R` *members*, each a full set of the flow's parameters drawn from the
flow's own initialisation (member 0 is the flow's current parameters), and draws from all
*active* members at once:

.. math::

    z_{b,r} \sim q_{\theta_r}, \qquad \log q_{\theta_r}(z_{b,r}),
    \qquad b = 1..B,\ r \in \mathcal A,

returned as tensors of shape ``(B, |A|, D)`` and ``(B, |A|)``. A loss that sums the members'
own mean losses gives every member exactly the gradient of its own fit, and an element-wise
optimizer (Adam) keeps their updates independent: :math:`R` independent fits in one loop.
:func:`halving_steps` and :meth:`Population.keep` then drop the worse half at fixed steps
(successive halving), see :func:`pyro_nf.reverse_kl.fit_reverse_kl`.

Two implementations, picked by :func:`make_population`:

* :class:`StackedPopulation` for a directly parameterized :class:`~pyro_nf.Flow` whose trainable
  parameters are all layer parameter vectors (planar, radial, the affine bases, permutations):
  the members' vectors are stacked into ``(R, P)`` tensors and every layer is built once with
  batched parameters, so one step costs about as much as one fit on a batch of
  :math:`B\,|\mathcal A|`.
* :class:`ModulePopulation` for any other flow module (IAF/MAF/coupling flows with networks,
  Pyro's ``TransformedDistribution`` flows): :math:`R` deep copies, drawn from one after the
  other (:math:`|\mathcal A|` times the cost of one step).

Example:
    >>> import pyro_nf
    >>> _ = torch.manual_seed(0)
    >>> pop = make_population(pyro_nf.planar(2, depth=4), 3)
    >>> type(pop).__name__, pop.active
    ('StackedPopulation', [0, 1, 2])
    >>> z, log_q = pop.draw(5)
    >>> z.shape, log_q.shape
    (torch.Size([5, 3, 2]), torch.Size([5, 3]))
    >>> pop.keep([2, 0]); pop.active
    [0, 2]
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..flows.distribution import FlowDistribution
from ..flows.flow import Flow
from ..transforms.base import FlowTransform
from ..utils.validation import check_positive_int

__all__ = [
    "ModulePopulation",
    "Population",
    "StackedPopulation",
    "draw_with_log_prob",
    "halving_steps",
    "make_population",
    "reset_flow",
]


def halving_steps(steps: int, population: int) -> list[int]:
    r"""The steps at which a population of ``population`` members is halved.

    :math:`H = \lceil \log_2 R \rceil` halvings, evenly spaced over the first half of the run,
    at steps :math:`\lfloor i\,T / (2H) \rfloor`, :math:`i = 1..H`: the last one at
    :math:`T/2`, so that the one member left has the second half of the run (and the low
    learning rates at the end of a decaying schedule) to itself.

    Args:
        steps: :math:`T`, the length of the run.
        population: :math:`R \ge 1`.

    Example:
        >>> halving_steps(10_000, 4), halving_steps(10_000, 8), halving_steps(10_000, 1)
        ([2500, 5000], [1666, 3333, 5000], [])
    """
    steps = check_positive_int("steps", steps)
    population = check_positive_int("population", population)
    rounds = math.ceil(math.log2(population)) if population > 1 else 0
    if steps < 2 * rounds:
        raise ValueError(
            f"steps: expected at least {2 * rounds} steps (two per halving) for population="
            f"{population}, got {steps}"
        )
    return [i * steps // (2 * rounds) for i in range(1, rounds + 1)]


class Population(nn.Module):
    """Base class: ``R`` members, the indices of the active ones, draws from all active ones.

    Subclasses implement :meth:`draw` and :meth:`copy_member_into`; ``active`` is a sorted list
    of member indices.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = check_positive_int("size", size)
        self.active: list[int] = list(range(self.size))

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` reparameterized draws from every active member: ``z`` of shape
        ``(n, len(active), D)`` and ``log q`` of shape ``(n, len(active))``."""
        raise NotImplementedError

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members`` (indices into ``range(size)``, all currently active)."""
        chosen = sorted({int(m) for m in members})
        if not chosen or any(m not in self.active for m in chosen):
            raise ValueError(
                f"members: expected a non-empty subset of the active members {self.active}, "
                f"got {list(members)}"
            )
        self.active = chosen

    def copy_member_into(self, member: int, flow: nn.Module) -> None:
        """Write member ``member``'s parameters into ``flow`` (the flow it was made from)."""
        raise NotImplementedError


def draw_with_log_prob(flow: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` reparameterized draws from ``flow()`` and their log densities (in one pass where the
    distribution has ``rsample_and_log_prob``)."""
    q = flow()
    if hasattr(q, "rsample_and_log_prob"):
        return q.rsample_and_log_prob((n,))
    z = q.rsample((n,))
    return z, q.log_prob(z)


def reset_flow(flow: nn.Module) -> None:
    """Draw fresh initial parameters into ``flow``: its own ``reset_parameters()``, else that of
    every top-most submodule that has one (Pyro's transforms, ``nn.Linear``, a wrapped pyro-nf
    flow).

    Raises:
        ValueError: naming ``flow`` when neither it nor any submodule can be reset.
    """
    if callable(getattr(flow, "reset_parameters", None)):
        flow.reset_parameters()
        return
    # the top-most resettable submodules only: a module's own reset_parameters covers its
    # children (and may re-zero layers that resetting those children again would undo)
    resettable, prefixes = [], []
    for name, m in flow.named_modules():
        if m is flow or not callable(getattr(m, "reset_parameters", None)):
            continue
        if not any(name.startswith(p) for p in prefixes):
            resettable.append(m)
            prefixes.append(name + ".")
    if not resettable:
        raise ValueError(
            f"flow: expected a module with fresh initial parameters for several starts "
            f"(a reset_parameters() on it or a submodule), got {type(flow).__name__} with none"
        )
    with torch.no_grad():
        for m in resettable:
            m.reset_parameters()


def _stackable(flow: nn.Module) -> bool:
    """A directly parameterized Flow whose trainable parameters are all layer ``params``."""
    if not isinstance(flow, Flow) or flow.context_dim is not None:
        return False
    trained = 0
    for layer in flow.layers:
        own = [p for p in layer.parameters() if p.requires_grad]
        if own and (layer.amortized or len(own) != 1 or own[0] is not layer.params):
            return False
        trained += len(own)
    return trained > 0


class StackedPopulation(Population):
    r"""``R`` members of a directly parameterized :class:`~pyro_nf.Flow`, parameters stacked.

    Layer :math:`l`'s members live in one ``(R, P_l)`` parameter; :meth:`draw` builds every
    layer with the active rows (batched parameters, as for an amortized flow with batch shape
    ``(|A|,)``) and samples through the flow's own fused transforms.

    Args:
        flow: the flow (not modified; member 0 starts at its current parameters).
        size: :math:`R`.
        reset: draws fresh initial parameters into a flow (default :func:`reset_flow`), called
            on a scratch copy for members 1..R-1.
    """

    def __init__(
        self, flow: Flow, size: int, reset: Callable[[nn.Module], None] = reset_flow
    ) -> None:
        super().__init__(size)
        if not _stackable(flow):
            raise ValueError(
                "flow: expected a directly parameterized pyro_nf.Flow whose layers hold their "
                "parameters in one vector each (planar, radial, affine, permutation layers), got "
                f"{type(flow).__name__}; use ModulePopulation"
            )
        self.dim = flow.dim
        self.context_dim = None  # FlowLike: members are directly parameterized
        self._layers = list(flow.layers)  # used to build transforms; not trained here
        scratch = copy.deepcopy(flow)
        draws: list[list[torch.Tensor | None]] = []
        for r in range(self.size):
            if r > 0:
                reset(scratch)
            draws.append([self._vector(layer) for layer in scratch.layers])
        like = next(v for v in draws[0] if v is not None)  # a stackable flow has one
        self.stacked = nn.ParameterList(
            [
                nn.Parameter(torch.stack([d[i] for d in draws])) if draws[0][i] is not None else
                nn.Parameter(like.new_empty(0), requires_grad=False)  # a layer without any
                for i in range(len(self._layers))
            ]
        )  # fmt: skip

    @staticmethod
    def _vector(layer: nn.Module) -> torch.Tensor | None:
        params = getattr(layer, "params", None)
        trained = isinstance(params, nn.Parameter) and params.requires_grad
        return params.detach().clone() if trained else None

    def build_transforms(
        self, context: torch.Tensor | None = None, validate: bool = True
    ) -> list[FlowTransform]:
        """The transforms with the active members' parameters (batch shape ``(|A|,)``)."""
        rows = torch.tensor(self.active, device=self.stacked[0].device)  # all on one device
        out = []
        for layer, stacked in zip(self._layers, self.stacked, strict=True):
            if stacked.numel():
                out.append(layer.build(stacked.index_select(0, rows), None))
            else:
                out.append(layer.transform(None, None))
        return out

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = FlowDistribution(self, None, batch_shape=(len(self.active),))
        return q.rsample_and_log_prob((n,))

    @torch.no_grad()
    def copy_member_into(self, member: int, flow: nn.Module) -> None:
        for layer, stacked in zip(flow.layers, self.stacked, strict=True):
            if stacked.numel():
                layer.params.copy_(stacked[member])


class ModulePopulation(Population):
    """``R`` deep copies of any flow module, drawn from one after the other.

    Args:
        flow: an ``nn.Module`` whose call returns a reparameterizable distribution with event
            shape ``(D,)`` (not modified; member 0 starts at its current parameters).
        size: :math:`R`.
        reset: draws fresh initial parameters into a copy (members 1..R-1; default
            :func:`reset_flow`).
    """

    def __init__(
        self, flow: nn.Module, size: int, reset: Callable[[nn.Module], None] = reset_flow
    ) -> None:
        super().__init__(size)
        members = [copy.deepcopy(flow) for _ in range(self.size)]
        for member in members[1:]:
            reset(member)
        self.members = nn.ModuleList(members)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        draws = [draw_with_log_prob(self.members[r], n) for r in self.active]
        return torch.stack([z for z, _ in draws], dim=1), torch.stack([q for _, q in draws], dim=1)

    @torch.no_grad()
    def copy_member_into(self, member: int, flow: nn.Module) -> None:
        flow.load_state_dict(self.members[member].state_dict())


def make_population(
    flow: nn.Module, size: int, reset: Callable[[nn.Module], None] = reset_flow
) -> Population:
    """A :class:`StackedPopulation` where ``flow`` allows it, else a :class:`ModulePopulation`.

    Args:
        flow: the flow to copy (not modified).
        size: number of members :math:`R \\ge 1`.
        reset: draws fresh initial parameters into a copy of ``flow`` (default
            :func:`reset_flow`).

    Example:
        >>> import pyro_nf
        >>> type(make_population(pyro_nf.iaf(2, depth=2), 2)).__name__
        'ModulePopulation'
    """
    size = check_positive_int("size", size)
    if _stackable(flow):
        return StackedPopulation(flow, size, reset)
    return ModulePopulation(flow, size, reset)
