"""Imagination over a fixed horizon, captured once per shape into a CUDA graph.

At large batch (B = 1024) an imagination step is launch-bound: a few dozen small
kernels whose launch costs more than their work. :class:`RSSMImaginer` records the
whole horizon (policy, prior step and sampling, ``H`` times) into one CUDA graph
the first time it sees a shape and replays it afterwards, so a horizon costs one
launch. Without CUDA (or with ``use_graph=False``) it runs the same code eagerly.

Imagination runs without autograd, as in DreamerV3: it starts from detached
posterior states and the world model is not trained through it. An eager rollout's
policy may still run under ``torch.enable_grad`` and keep its own graph (DreamerV3's
actor does, :meth:`RSSMImaginer.captures` says when); a captured one cannot, and the
actor and critic re-evaluate themselves on the returned (detached) states and actions.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

Tensor = torch.Tensor


class Imagination(NamedTuple):
    deter: Tensor         # [B, horizon + 1, H]      start state first
    stoch: Tensor         # [B, horizon + 1, S, K]
    action: Tensor        # [B, horizon, A]          action[:, k] taken in state k
    prior_logits: Tensor  # [B, horizon, S, K]       logits of states 1..horizon
    index: Tensor | None = None  # [B, horizon + 1, S]  class indices of stoch, where the rollout gathered


class RSSMImaginer:
    """Roll the RSSM prior forward ``horizon`` steps from ``(h, z)``.

    Args:
        params_fn: returns the :class:`~worldmodels.ops.rssm.RSSMParams` to use; it is
            called inside the captured region, so parameters derived from module
            parameters (e.g. ``tanh``) stay current, and the module's parameters must be
            updated in place (every ``torch.optim`` optimiser does).
        unimix: uniform mix of the prior sampler.
        impl: the step's ``impl`` (see :func:`~worldmodels.ops.rssm.rssm_imagine_step`).
        use_graph: capture CUDA graphs (default: when the state is on CUDA).

    Call with ``policy``, a function ``(deter [B, H], stoch [B, S, K]) -> action [B, A]``
    that is capturable (no host synchronisation, fixed shapes; sampling with
    ``torch.rand``/``torch.randn`` of the default generator is fine), or with
    ``actions [B, horizon, A]`` for an open-loop rollout. The noise of the prior
    samples is drawn with ``torch.rand`` from the default generator inside the rollout.
    Returned tensors are fresh copies (safe to keep across calls).

    On the CPU, where :func:`~worldmodels.ops.onehot_linear.gathers`, an eager rollout
    whose start ``stoch`` is exactly one-hot keeps the class indices of every state
    (``Imagination.index``): each step's input projection then gathers weight columns
    instead of multiplying by the one-hot latents, and a policy with the attribute
    ``takes_index = True`` is called as ``policy(deter, stoch, index [B, S])``.
    """

    def __init__(self, params_fn: Callable, *, unimix: float = 0.01, impl: str = "auto",
                 use_graph: bool | None = None, warmup: int = 2):
        self.params_fn, self.unimix, self.impl = params_fn, unimix, impl
        self.use_graph, self.warmup = use_graph, warmup
        self._graphs: dict = {}

    def captures(self, deter: Tensor) -> bool:
        """Whether a rollout from ``deter`` replays a CUDA graph (else it runs eagerly, and
        the policy may keep what it computes)."""
        return self.use_graph if self.use_graph is not None else deter.is_cuda

    def __call__(self, deter: Tensor, stoch: Tensor, policy: Callable | None = None, *,
                 actions: Tensor | None = None, horizon: int | None = None) -> Imagination:
        horizon = self._check(deter, policy, actions, horizon)
        graph = self.captures(deter)
        if graph and not deter.is_cuda:
            raise ValueError("RSSMImaginer: use_graph=True needs CUDA tensors; pass use_graph=None or False.")
        with torch.no_grad():
            if not graph:
                return self._rollout(deter, stoch, policy, actions, horizon)
            return self._replay(deter, stoch, policy, actions, horizon)

    @staticmethod
    def _check(deter, policy, actions, horizon) -> int:
        if (policy is None) == (actions is None):
            raise ValueError("RSSMImaginer: give exactly one of policy or actions.")
        if actions is not None:
            if actions.dim() != 3 or actions.shape[0] != deter.shape[0]:
                raise ValueError(f"actions must be [B, horizon, A] with B={deter.shape[0]}, got {tuple(actions.shape)}.")
            if horizon is not None and horizon != actions.shape[1]:
                raise ValueError(f"horizon={horizon} does not match actions' {actions.shape[1]} steps.")
            horizon = actions.shape[1]
        if horizon is None or int(horizon) < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}.")
        return int(horizon)

    def _rollout(self, deter, stoch, policy, actions, horizon) -> Imagination:
        from .onehot_linear import gathers, onehot_index
        from .rssm import rssm_imagine_step

        params = self.params_fn()
        if self._casts_matrices_once(deter):
            params = params.with_matrices_in(torch.get_autocast_dtype("cpu"))
        noise = torch.rand((horizon, *stoch.shape), device=stoch.device)
        index = onehot_index(stoch) if self.impl != "ref" and gathers(stoch) else None
        with_index = index is not None and getattr(policy, "takes_index", False)
        deters, stochs, acts, priors, indices = [deter], [stoch], [], [], [index]
        for k in range(horizon):
            if actions is not None:
                action = actions[:, k]
            else:
                action = policy(deter, stoch, index) if with_index else policy(deter, stoch)
            deter, stoch, prior = rssm_imagine_step(deter, stoch, action, params, unimix=self.unimix,
                                                    noise=noise[k], impl=self.impl, stoch_index=index)
            if index is not None:
                index = stoch.argmax(-1)  # the sampler's output is exactly one-hot
            deters.append(deter), stochs.append(stoch), acts.append(action), priors.append(prior)
            indices.append(index)
        return Imagination(torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(acts, 1),
                           torch.stack(priors, 1), None if index is None else torch.stack(indices, 1))

    def _casts_matrices_once(self, deter: Tensor) -> bool:
        """Under CPU autocast, where the step's products are PyTorch's (paths "scan" and
        "ref"; the C++ and Triton cells take fp32 weights)."""
        from .rssm import resolve_rssm_impl

        return (deter.device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and resolve_rssm_impl(self.impl, deter.device) in ("scan", "ref"))

    def _replay(self, deter, stoch, policy, actions, horizon) -> Imagination:
        key = (tuple(deter.shape), tuple(stoch.shape), deter.dtype, deter.device, horizon,
               None if actions is None else tuple(actions.shape), id(policy))
        if key not in self._graphs:
            self._graphs[key] = self._capture(deter, stoch, policy, actions, horizon)
        graph, inputs, output = self._graphs[key]
        inputs[0].copy_(deter), inputs[1].copy_(stoch)
        if actions is not None:
            inputs[2].copy_(actions)
        graph.replay()
        return Imagination(*(None if t is None else t.clone() for t in output))

    def _capture(self, deter, stoch, policy, actions, horizon):
        inputs = [deter.clone(), stoch.clone()] + ([] if actions is None else [actions.clone()])
        static_actions = None if actions is None else inputs[2]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self._rollout(inputs[0], inputs[1], policy, static_actions, horizon)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._rollout(inputs[0], inputs[1], policy, static_actions, horizon)
        return graph, inputs, output
