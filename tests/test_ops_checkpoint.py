"""Checkpointing modes through a DiT-like block, the saved-bytes counter, and a convergence check of
the fused ops (same loss curve with NPEDIT_OPS=triton and =ref)."""
import pytest
import torch
import torch.nn as nn

from npedit import ops
from npedit.ops.checkpoint import CHECKPOINT_MODES, AttentionCalls, checkpointed
from npedit.ops.memory import SavedTensorCounter, saved_tensor_bytes


class Block(nn.Module):
    """adaLN -> qkv -> attention -> proj, then an MLP: the shape of a DiT block."""

    def __init__(self, dim: int = 32, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.ada = nn.Linear(dim, 2 * dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, cond):
        shift, scale = self.ada(cond).chunk(2, dim=-1)
        q, k, v = self.qkv(ops.adaln_modulate(x, shift, scale)).unflatten(-1, (3, self.heads, -1)).unbind(-3)
        x = x + self.proj(ops.attention(q, k, v).flatten(-2))
        return x + self.mlp(x)


def _unroll(block, x, cond, mode, steps=2):
    for _ in range(steps):  # the student's passes: gradients flow through every step
        x = checkpointed(block, x, cond, mode=mode)
    return x


@pytest.mark.parametrize("backend", ["ref", "triton"])
def test_modes_give_equal_gradients_and_selective_never_reruns_attention(monkeypatch, backend):
    monkeypatch.setenv("NPEDIT_OPS", backend)
    block = Block()
    x = torch.randn(2, 23, 32, requires_grad=True)
    cond = torch.randn(2, 1, 32)
    grads, reruns = {}, {}
    for mode in CHECKPOINT_MODES:
        out = _unroll(block, x, cond, mode)
        counter = AttentionCalls()
        with counter:
            grads[mode] = torch.autograd.grad(out.square().mean(), [x, *block.parameters()])
        reruns[mode] = counter.calls
    assert reruns == {"none": 0, "full": 2, "selective": 0}
    for mode in ("full", "selective"):
        for a, b in zip(grads["none"], grads[mode]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_selective_keeps_exactly_attention_out_and_lse(monkeypatch):
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    block = Block()
    b, s, d, h = 2, 23, 32, 2
    x = torch.randn(b, s, d, requires_grad=True)
    cond = torch.randn(b, 1, d)
    saved = {mode: saved_tensor_bytes(_unroll, block, x, cond, mode) for mode in CHECKPOINT_MODES}
    steps = 2
    # the first step's output is the second step's input: the checkpoint keeps it alive
    assert saved["full"] == (steps - 1) * b * s * d * 4
    assert saved["selective"] == saved["full"] + steps * (b * s * d * 4 + b * h * s * 4)  # out + lse per step
    assert saved["none"] > 4 * saved["selective"]


class GatheringBlock(Block):
    """A block whose weights are "gathered" by a pre-hook only when not already available, as ZeRO-3
    does: forward and recompute run different numbers of allocations and copies."""

    def __init__(self):
        super().__init__()
        self.available = False
        self.register_forward_pre_hook(self._gather)

    def _gather(self, module, args):
        if not self.available:
            buffer = torch.empty(3 * 32 * 32)            # the all-gather's flat buffer
            buffer.copy_(torch.cat([p.detach().reshape(-1) for p in self.qkv.parameters()])[:buffer.numel()])
            self.available = True


def test_selective_tolerates_ops_that_differ_between_forward_and_recompute(monkeypatch):
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    block = GatheringBlock()
    x = torch.randn(2, 23, 32, requires_grad=True)
    cond = torch.randn(2, 1, 32)
    expected = torch.autograd.grad(_unroll(block, x, cond, "none").square().mean(), [x, *block.parameters()])
    block.available = True                    # forward: already gathered (prefetched)
    out = _unroll(block, x, cond, "selective")
    block.available = False                   # recompute: gathered again
    counter = AttentionCalls()
    with counter:
        grads = torch.autograd.grad(out.square().mean(), [x, *block.parameters()], retain_graph=True)
    assert counter.calls == 0
    for a, b in zip(expected, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        torch.autograd.grad(out.square().mean(), [x])


def test_no_grad_runs_plainly_and_bad_mode_is_named():
    block = Block()
    x, cond = torch.randn(1, 5, 32), torch.randn(1, 1, 32)
    with torch.no_grad():
        torch.testing.assert_close(checkpointed(block, x, cond, mode="selective"), block(x, cond))
    with pytest.raises(ValueError, match="checkpoint mode"):
        checkpointed(block, x, cond, mode="half")


# ------------------------------------------------------------------------------------- memory helper


def test_saved_tensor_bytes_counts_created_storages_once():
    a = torch.randn(100, requires_grad=True)
    # exp saves its result (400 B); the output (sum) is excluded; a (an input) is not counted
    assert saved_tensor_bytes(lambda: (a * 2).exp().sum()) == 400
    def shared():
        y = a.exp()  # saved by exp (its result) and by the two muls below
        return (y[:50] * y[50:]).sum()

    assert saved_tensor_bytes(shared) == 400
    # inputs saved by autograd are counted only on request
    assert saved_tensor_bytes(lambda: (a * a).sum()) == 0
    assert saved_tensor_bytes(lambda: (a * a).sum(), include_inputs=True) == 400


def test_counter_as_context_manager():
    a = torch.randn(10, 10, requires_grad=True)
    with SavedTensorCounter() as counter:
        out = (a @ a).tanh()  # tanh saves its output: excluded, matmul saves a (input)
        loss = out.sum()
    assert counter.saved_bytes(exclude=loss) == 400  # out is no longer an output of the region
    assert counter.saved_bytes(exclude=(out, loss)) == 0


@pytest.mark.parametrize("backend", ["ref", "triton"])
def test_block_compiles_fullgraph_with_selective_checkpointing(monkeypatch, backend):
    """torch.compile sees the custom ops (aot_eager: no C++ compiler needed), forward and backward."""
    monkeypatch.setenv("NPEDIT_OPS", backend)
    block = Block()
    x, cond = torch.randn(1, 9, 32, requires_grad=True), torch.randn(1, 1, 32)
    fn = lambda x: checkpointed(block, x, cond, mode="selective").square().mean()  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    got, want = compiled(x), fn(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])


# --------------------------------------------------------------------------------------- convergence


def test_fused_ops_converge_like_the_reference(monkeypatch):
    """A tiny model trained a few steps from one seed with fused ops on and off: same loss curve."""
    curves = {}
    for backend in ("ref", "triton"):
        monkeypatch.setenv("NPEDIT_OPS", backend)
        torch.manual_seed(0)
        block = Block()
        head = nn.Parameter(0.1 * torch.randn(40, 32))
        opt = torch.optim.AdamW([*block.parameters(), head], lr=1e-2)
        x, cond = torch.randn(2, 17, 32), torch.randn(2, 1, 32)
        target = torch.randint(0, 40, (2,))
        curve = []
        for _ in range(4):
            h = checkpointed(block, x, cond, mode="selective")[:, -1]  # [2, 32] answer positions
            loss = ops.vocab_answer_loss(h, head, target).mean() + ops.binary_answer_loss(h, head, target,
                                                                                         target.flip(0)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves[backend] = curve
    assert curves["ref"][-1] < curves["ref"][0]
    torch.testing.assert_close(torch.tensor(curves["triton"]), torch.tensor(curves["ref"]), rtol=1e-4, atol=1e-5)
