import pytest
import torch

from models.config import ModelConfig
import torch.nn.functional as F

from models.loss import IGNORE_INDEX, SoftTargets, mtp_forward_backward, mtp_loss, split_window
from models.transformer import MTPTransformer


def make_model(n_future: int) -> MTPTransformer:
    torch.manual_seed(1)
    config = ModelConfig(dim=32, n_layers=n_future + 2, n_heads=4, vocab_size=40, n_future_tokens=n_future, max_seq_len=32)
    return MTPTransformer(config).double()


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_split_window_targets():
    window = torch.arange(10).unsqueeze(0)  # (1, 10)
    inputs, targets = split_window(window, 3)
    assert inputs.tolist() == [list(range(7))]
    assert targets[0, 0].tolist() == list(range(1, 8))
    assert targets[0, 2].tolist() == list(range(3, 10))


@pytest.mark.parametrize("n_future", [1, 2, 4, 8])
@pytest.mark.parametrize("weighted", [False, True])
def test_memory_efficient_gradients_equal_naive(n_future, weighted):
    model = make_model(n_future)
    window = torch.randint(0, 40, (3, 16 + n_future))
    inputs, targets = split_window(window, n_future)
    weights = [1.0 / (i + 1) for i in range(n_future)] if weighted else None

    loss, naive_stats = mtp_loss(model, inputs, targets, weights)
    loss.backward()
    naive = grads(model)
    model.zero_grad(set_to_none=True)

    stats = mtp_forward_backward(model, inputs, targets, weights)
    efficient = grads(model)

    assert naive.keys() == efficient.keys() == {n for n, _ in model.named_parameters()}
    for name in naive:
        torch.testing.assert_close(efficient[name], naive[name], atol=1e-12, rtol=1e-10, msg=name)
    torch.testing.assert_close(stats.loss, naive_stats.loss)
    torch.testing.assert_close(stats.correct, naive_stats.correct)


def test_loss_scale_and_heads_only():
    model = make_model(4)
    inputs, targets = split_window(torch.randint(0, 40, (2, 20)), 4)
    loss, _ = mtp_loss(model, inputs, targets)
    (0.25 * loss).backward()
    naive = grads(model)
    model.zero_grad(set_to_none=True)

    mtp_forward_backward(model, inputs, targets, loss_scale=0.25, train_trunk=False)
    trunk = {id(p) for p in model.trunk_parameters()}
    for name, p in model.named_parameters():
        if id(p) in trunk:
            assert p.grad is None, f"{name} got a gradient with train_trunk=False"
        else:
            torch.testing.assert_close(p.grad, naive[name], atol=1e-12, rtol=1e-10, msg=name)


def test_ignore_index_positions_do_not_count():
    model = make_model(2)
    inputs, targets = split_window(torch.randint(0, 40, (1, 12)), 2)
    targets[:, 1, -3:] = -100
    stats = mtp_forward_backward(model, inputs, targets)
    assert stats.count.tolist() == [10, 7]


def test_scattered_ignored_rows_give_the_naive_gradients_and_an_empty_head_adds_nothing():
    model = make_model(3)
    inputs, targets = split_window(torch.randint(0, 40, (2, 14), generator=torch.Generator().manual_seed(1)), 3)
    drop = torch.rand(targets.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    targets[drop] = IGNORE_INDEX
    targets[:, 2] = IGNORE_INDEX  # no scored row at all for head 3
    naive, naive_stats = mtp_loss(model, inputs, targets)
    assert torch.isfinite(naive) and naive_stats.count[2] == 0
    naive.backward()
    expected = grads(model)
    model.zero_grad()
    stats = mtp_forward_backward(model, inputs, targets)
    assert stats.count[2] == 0 and stats.loss[2] == 0 and torch.isfinite(stats.loss).all()
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], atol=1e-12, rtol=1e-10, msg=name)
        else:
            assert p.grad is None or not p.grad.any(), name


def teacher(shape: tuple[int, ...], k: int, seed: int = 2) -> tuple[torch.Tensor, SoftTargets]:
    """A random teacher's logits (B, n, T, V) and its top-k SoftTargets."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, generator=generator, dtype=torch.double)
    values, ids = logits.topk(k, dim=-1)
    return logits, SoftTargets(ids, torch.softmax(values, dim=-1))


def naive_soft_loss(model, inputs, targets, soft: SoftTargets, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """The same loss in one graph over dense distributions: p scattered to the vocabulary."""
    log_q = torch.log_softmax(model(inputs), dim=-1)  # (B, n, T, V)
    p = torch.zeros_like(log_q).scatter(-1, soft.ids, soft.probs)
    kl = (torch.xlogy(p, p) - p * log_q).sum(-1)  # (B, n, T)
    valid = (targets != IGNORE_INDEX).double()
    per_head = (kl * valid).sum((0, 2)) / valid.sum((0, 2))
    return sum(w * loss for w, loss in zip(weights, per_head)), per_head


def test_soft_target_gradients_equal_autograd_on_the_naive_loss():
    model = make_model(3)
    inputs, targets = split_window(torch.randint(0, 40, (3, 16 + 3)), 3)
    targets[:, 2, -4:] = IGNORE_INDEX  # positions that are not scored add nothing
    _, soft = teacher((3, 3, 16, 40), k=5)
    weights = [1.0, 0.5, 0.25]

    loss, per_head = naive_soft_loss(model, inputs, targets, soft, weights)
    (0.5 * loss).backward()
    naive = grads(model)
    model.zero_grad(set_to_none=True)

    stats = mtp_forward_backward(model, inputs, targets, weights, loss_scale=0.5, soft=soft)
    efficient = grads(model)
    assert naive.keys() == efficient.keys()
    for name in naive:
        torch.testing.assert_close(efficient[name], naive[name], atol=1e-12, rtol=1e-10, msg=name)
    torch.testing.assert_close(stats.loss, per_head.detach(), check_dtype=False)  # stats are float32
    assert stats.count.tolist() == [48, 48, 36]


def test_soft_targets_over_the_whole_vocabulary_are_the_full_kl():
    model = make_model(2)
    inputs, targets = split_window(torch.randint(0, 40, (2, 12 + 2)), 2)
    teacher_logits, soft = teacher((2, 2, 12, 40), k=40)
    stats = mtp_forward_backward(model, inputs, targets, soft=soft)
    with torch.no_grad():
        log_q = torch.log_softmax(model(inputs), dim=-1)
    log_p = torch.log_softmax(teacher_logits, dim=-1)
    for head in range(2):
        full = F.kl_div(log_q[:, head].flatten(0, 1), log_p[:, head].flatten(0, 1), log_target=True,
                        reduction="batchmean")
        torch.testing.assert_close(stats.loss[head], full, check_dtype=False)
    # The model's own distributions as the teacher: KL 0, every argmax agrees.
    own = log_q.topk(40, dim=-1)
    own_targets = own.indices[..., 0]
    stats = mtp_forward_backward(model, inputs, own_targets, soft=SoftTargets(own.indices, own.values.exp()))
    torch.testing.assert_close(stats.loss, torch.zeros(2), atol=1e-6, rtol=0)
    assert stats.correct.tolist() == stats.count.tolist() == [24, 24]
