"""The comparison the module tests share: ours against a torch.nn reference, step by step."""

import torch


def assert_steps_match(
    ours, ref, shape, tol, steps=3, seed=0, scale=1.0, shift=0.0, dtype=torch.float64
):
    """Feed both modules the same random batches (``randn * scale + shift``) and upstream
    gradients; after every step require equal outputs, input gradients, parameter gradients
    (by name) and buffers (same names, equal values, no autograd history). Returns the last
    input batch."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(shape, generator=g, dtype=dtype) * scale + shift
        dy = torch.randn(shape, generator=g, dtype=dtype)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), ref(xb)
        torch.testing.assert_close(ya, yb, **tol)
        ya.backward(dy)
        yb.backward(dy)
        torch.testing.assert_close(xa.grad, xb.grad, **tol)
        for (n, p), (m, q) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
            assert n == m
            torch.testing.assert_close(p.grad, q.grad, **tol, msg=n)
        assert [n for n, _ in ours.named_buffers()] == [n for n, _ in ref.named_buffers()]
        for name, buf in ours.named_buffers():
            torch.testing.assert_close(buf, ref.get_buffer(name), **tol, msg=name)
            assert buf.grad_fn is None and not buf.requires_grad, name
    return x
