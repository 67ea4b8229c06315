"""Autograd helpers shared by the ops' backward formulas."""
import torch


def graph_grads(fn, inputs, needed, grad):
    """The gradients of ``fn(*inputs)`` (weighted by ``grad``) with respect to each input, with a graph;
    None where not ``needed``.

    For create_graph=True (double backward, gradient penalties), which asks for gradients that are
    differentiable themselves: fastseg's backward kernels are not, so the ops' backward formulas then take
    the gradient of the pure-PyTorch reference ``fn`` instead. Each input enters ``fn`` through an alias
    (``view_as``): the gradients are the partial derivatives with respect to each argument, as the
    autograd engine expects, even when one input is a view of another (a pyramid level sliced from the
    one below): a gradient taken with respect to the inputs themselves would count such a path twice.
    """
    aliases = [v.view_as(v) if isinstance(v, torch.Tensor) else v for v in inputs]
    out = fn(*aliases)
    wanted = [a for a, n in zip(aliases, needed) if n and a is not None]
    gs = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True) if wanted else ())
    return [next(gs) if n and a is not None else None for a, n in zip(aliases, needed)]
