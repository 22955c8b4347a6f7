import pytest
import torch

from models.config import ModelConfig
from models.loss import mtp_forward_backward, mtp_loss, split_window
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
