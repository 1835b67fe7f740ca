"""Fused VLM logit-to-loss (binary Yes/No and full-vocabulary) against the references, and its memory.

CPU runs use the Triton interpreter (NPEDIT_OPS=triton). Interpreter tiles are 16 wide and a
vocabulary split holds two tiles, so vocab 123 crosses four splits with a tail, D = 40 three
reduction tiles with a tail, and Q = 19 two question tiles.
"""
import pytest
import torch

from npedit import ops
from npedit.ops.memory import saved_tensor_bytes
from npedit.ops.testing import assert_close_to_reference
from npedit.ops.triton import interpreting

# GPU tests time the compiled kernels: the interpreter on CUDA tensors would take hours
compiled_kernels = pytest.mark.skipif(interpreting(), reason="set TRITON_INTERPRET=0 to run the compiled kernels")

DTYPES = [  # (dtype, atol, rtol)
    pytest.param(torch.float32, 1e-6, 1e-6, id="fp32"),
    pytest.param(torch.float16, 1e-4, 1e-4, id="fp16"),
    pytest.param(torch.bfloat16, 1e-3, 1e-3, id="bf16"),
]


@pytest.fixture
def triton_backend(monkeypatch):
    monkeypatch.setenv("NPEDIT_OPS", "triton")


def _inputs(q, d, v, dtype, weight_grad):
    hidden = torch.randn(q, d, dtype=dtype, requires_grad=True)
    weight = (0.5 * torch.randn(v, d)).to(dtype).requires_grad_(weight_grad)
    return hidden, weight


def _compare(fast_fn, ref_fn, hidden, weight, atol, rtol):
    wrt = [hidden] + ([weight] if weight.requires_grad else [])
    grad = torch.rand(hidden.shape[0], device=hidden.device) + 0.5

    def run(fn, h, w):
        loss = fn(h, w)
        ws = [h] + ([w] if w.requires_grad else [])
        return [loss.detach()] + list(torch.autograd.grad(loss, ws, grad.to(loss.dtype)))

    fast = run(fast_fn, hidden, weight)
    ref_d = run(ref_fn, hidden, weight)
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_(weight.requires_grad)
    ref64 = run(ref_fn, h64, w64)
    assert fast[0].dtype == torch.float32, "losses are fp32"
    for name, a, r, r64 in zip(["loss", "d_hidden", "d_weight"], fast, ref_d, ref64):
        assert a.dtype == r.dtype and a.shape == r.shape, name
        assert_close_to_reference(a, r, r64, atol, rtol, name=name)
    return len(wrt)


@pytest.mark.parametrize("weight_grad", [False, True], ids=["frozen-head", "head-grad"])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_binary_answer_loss(triton_backend, dtype, atol, rtol, weight_grad):
    hidden, weight = _inputs(7, 40, 123, dtype, weight_grad)
    pos = torch.tensor([3, 3, 122, 0, 50, 7, 7])  # repeated rows accumulate in d_weight
    neg = torch.tensor([5, 9, 3, 0, 51, 7, 8])  # pos == neg: margin 0, loss log 2
    _compare(lambda h, w: ops.binary_answer_loss(h, w, pos, neg, scale=0.7),
             lambda h, w: ops.binary_answer_loss_ref(h, w, pos, neg, scale=0.7), hidden, weight, atol, rtol)


@pytest.mark.parametrize("weight_grad", [False, True], ids=["frozen-head", "head-grad"])
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
def test_vocab_answer_loss(triton_backend, dtype, atol, rtol, weight_grad):
    hidden, weight = _inputs(5, 40, 123, dtype, weight_grad)
    target = torch.tensor([0, 122, -100, 17, 17])  # first / last row, ignored (loss 0), repeated
    _compare(lambda h, w: ops.vocab_answer_loss(h, w, target, scale=0.7),
             lambda h, w: ops.vocab_answer_loss_ref(h, w, target, scale=0.7), hidden, weight, atol, rtol)


def test_vocab_answer_loss_two_question_tiles_and_large_logits(triton_backend):
    hidden, weight = _inputs(19, 24, 50, torch.float32, True)
    target = torch.randint(0, 50, (19,))
    _compare(lambda h, w: ops.vocab_answer_loss(h, w, target, scale=4.0),  # logits ~ +-50: online max matters
             lambda h, w: ops.vocab_answer_loss_ref(h, w, target, scale=4.0), hidden, weight, 1e-5, 1e-6)


def test_binary_loss_extreme_margins(triton_backend):
    hidden = torch.ones(2, 16) * torch.tensor([[40.0], [-40.0]])
    weight = torch.stack([torch.ones(16), -torch.ones(16)])  # margins +-1280
    loss = ops.binary_answer_loss(hidden, weight, torch.tensor([0, 0]), torch.tensor([1, 1]))
    ref = ops.binary_answer_loss_ref(hidden, weight, torch.tensor([0, 0]), torch.tensor([1, 1]))
    torch.testing.assert_close(loss, ref)
    assert torch.isfinite(loss).all()


# ------------------------------------------------------------------------------------------- memory


def _saved_bytes(loss_fn, vocab: int, seqlen: int, num_q: int = 4, dim: int = 32) -> int:
    """Bytes kept for backward by: answer-position gather from a [Q, S, D] sequence, then the loss."""
    seq = torch.randn(num_q, seqlen, dim, requires_grad=True)
    weight = torch.randn(vocab, dim)
    answer_pos = torch.randint(0, seqlen, (num_q,))
    ids = torch.randint(0, vocab, (num_q,))
    rows = torch.arange(num_q)

    def step():
        hidden = (seq * 2.0)[rows, answer_pos]  # [Q, D] copy: the [Q, S, D] product is not kept
        return loss_fn(hidden, weight, ids)

    return saved_tensor_bytes(step)


@pytest.mark.parametrize("which", ["binary", "vocab"])
def test_fused_loss_saves_O_QD_bytes_independent_of_vocab_and_length(triton_backend, which):
    if which == "binary":
        fn = lambda h, w, ids: ops.binary_answer_loss(h, w, ids, ids.flip(0))  # noqa: E731
    else:
        fn = lambda h, w, ids: ops.vocab_answer_loss(h, w, ids)  # noqa: E731
    num_q, dim = 4, 32
    counts = {(v, s): _saved_bytes(fn, v, s) for v, s in [(123, 8), (1000, 8), (123, 47)]}
    assert len(set(counts.values())) == 1, counts
    assert counts[(123, 8)] <= num_q * dim * 4 + num_q * 4 * 4  # hidden + a few fp32 per question


def test_reference_loss_memory_grows_with_vocab(monkeypatch):
    """The counter sees the [Q, V] logits the reference path keeps (sanity check of the memory test)."""
    monkeypatch.setenv("NPEDIT_OPS", "ref")
    fn = lambda h, w, ids: ops.vocab_answer_loss(h, w, ids)  # noqa: E731
    small, large = _saved_bytes(fn, 123, 8), _saved_bytes(fn, 1000, 8)
    assert large - small >= 4 * (1000 - 123) * 4  # at least the fp32 logits rows


# ------------------------------------------------------------------------------------ dispatch, errors


@pytest.mark.parametrize("weight_grad", [False, True])
def test_custom_ops_pass_opcheck(weight_grad):
    hidden, weight = _inputs(3, 16, 33, torch.float32, weight_grad)
    ids = torch.tensor([1, 2, 32])
    torch.library.opcheck(torch.ops.npedit.vocab_answer_loss_fwd.default, (hidden, weight, ids, 0.5))
    torch.library.opcheck(torch.ops.npedit.binary_answer_loss_fwd.default, (hidden, weight, ids, ids.flip(0), 0.5))


def test_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    hidden, weight = _inputs(3, 16, 20, torch.float32, False)
    ids = torch.tensor([1, 2, 3])
    assert torch.equal(ops.vocab_answer_loss(hidden, weight, ids), ops.vocab_answer_loss_ref(hidden, weight, ids))
    assert torch.equal(ops.binary_answer_loss(hidden, weight, ids, ids + 1),
                       ops.binary_answer_loss_ref(hidden, weight, ids, ids + 1))


def test_bad_inputs_are_named():
    hidden, weight = _inputs(3, 16, 20, torch.float32, False)
    with pytest.raises(ValueError, match="target_ids out of range"):
        ops.vocab_answer_loss(hidden, weight, torch.tensor([1, 2, 20]))
    with pytest.raises(ValueError, match=r"pos_ids must be an integer tensor of shape \[3\]"):
        ops.binary_answer_loss(hidden, weight, torch.tensor([1, 2]), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="same D"):
        ops.vocab_answer_loss(hidden, weight[:, :8], torch.tensor([1, 2, 3]))


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@compiled_kernels
@pytest.mark.parametrize("dtype,atol,rtol", [DTYPES[0], DTYPES[2]])
def test_answer_losses_cuda(monkeypatch, dtype, atol, rtol):
    monkeypatch.delenv("NPEDIT_OPS", raising=False)
    torch.manual_seed(0)
    hidden = torch.randn(13, 1000, device="cuda", dtype=dtype, requires_grad=True)
    weight = (0.05 * torch.randn(32001, 1000, device="cuda")).to(dtype).requires_grad_()
    target = torch.randint(0, 32001, (13,), device="cuda")
    _compare(lambda h, w: ops.vocab_answer_loss(h, w, target, scale=0.5),
             lambda h, w: ops.vocab_answer_loss_ref(h, w, target, scale=0.5), hidden, weight, atol * 10, rtol * 10)
    pos, neg = target, target.flip(0)
    _compare(lambda h, w: ops.binary_answer_loss(h, w, pos, neg, scale=0.5),
             lambda h, w: ops.binary_answer_loss_ref(h, w, pos, neg, scale=0.5), hidden, weight, atol, rtol)
