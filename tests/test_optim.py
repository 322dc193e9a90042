"""LARS against hand arithmetic, parameter groups, LR scaling and the warmup+cosine schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from distcl.train.optim import LARS, build_optimizer, lr_at, param_groups, scaled_lr, set_lr

torch.set_num_threads(1)


def _tiny_model() -> nn.Sequential:
    """Linear(3->2) + BatchNorm1d(2) in float64 with hand-picked weights and gradients."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    lin, bn = model[0], model[1]
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]))  # ||W|| = 5
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
        bn.weight.copy_(torch.tensor([1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.0, 0.25]))
    return model


def _set_grads(model: nn.Sequential) -> None:
    lin, bn = model[0], model[1]
    lin.weight.grad = torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, 0.8]], dtype=torch.float64)
    lin.bias.grad = torch.tensor([0.1, 0.2], dtype=torch.float64)
    bn.weight.grad = torch.tensor([0.3, -0.4], dtype=torch.float64)
    bn.bias.grad = torch.tensor([-0.5, 0.0], dtype=torch.float64)


def _norm(rows: list[list[float]]) -> float:
    return math.sqrt(sum(x * x for row in rows for x in row))


def test_lars_matches_hand_computed_two_steps():
    lr, m, wd, eta, eps = 2.0, 0.9, 0.1, 0.001, 1e-8
    model = _tiny_model()
    opt = LARS(param_groups(model, wd), lr=lr, momentum=m, weight_decay=wd, trust_coefficient=eta)

    # Hand arithmetic for the linear weight (decayed, trust-scaled).
    w = [[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]
    g = [[0.6, 0.0, 0.0], [0.0, 0.0, 0.8]]
    v = [[0.0] * 3 for _ in range(2)]
    # Excluded params: bias b, BN weight s, BN bias c: v = m v + lr g, no wd, no trust.
    excluded = {
        "b": ([0.5, -1.0], [0.1, 0.2]),
        "s": ([1.0, 2.0], [0.3, -0.4]),
        "c": ([0.0, 0.25], [-0.5, 0.0]),
    }
    ex_v = {k: [0.0, 0.0] for k in excluded}
    for _ in range(2):
        _set_grads(model)
        opt.step()
        # ||w|| = 5 and ||g|| = 1 at step 1: trust = 0.001 * 5 / (1 + 0.1 * 5) = 0.00333...
        trust = eta * _norm(w) / (_norm(g) + wd * _norm(w) + eps)
        d = [[g[i][j] + wd * w[i][j] for j in range(3)] for i in range(2)]
        v = [[m * v[i][j] + lr * trust * d[i][j] for j in range(3)] for i in range(2)]
        w = [[w[i][j] - v[i][j] for j in range(3)] for i in range(2)]
        for k, (p, gp) in excluded.items():
            ex_v[k] = [m * ex_v[k][i] + lr * gp[i] for i in range(2)]
            excluded[k] = ([p[i] - ex_v[k][i] for i in range(2)], gp)

    lin, bn = model[0], model[1]
    f64 = torch.float64
    torch.testing.assert_close(lin.weight.detach(), torch.tensor(w, dtype=f64), rtol=1e-12, atol=0)
    torch.testing.assert_close(lin.bias.detach(), torch.tensor(excluded["b"][0], dtype=f64))
    torch.testing.assert_close(bn.weight.detach(), torch.tensor(excluded["s"][0], dtype=f64))
    torch.testing.assert_close(bn.bias.detach(), torch.tensor(excluded["c"][0], dtype=f64))


def test_lars_zero_weight_uses_trust_one():
    w = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = LARS([w], lr=0.5, momentum=0.0, weight_decay=0.1)
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.5, dtype=torch.float64))


def test_lars_excluded_equals_torch_sgd_at_constant_lr():
    """With every param excluded, SimCLR's momentum form equals torch SGD at a constant lr."""
    torch.manual_seed(0)
    a = nn.Linear(4, 3).double()
    b = copy.deepcopy(a)
    lars = LARS([{"params": a.parameters(), "lars_exclude": True, "weight_decay": 0.0}], lr=0.1)
    sgd = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(3):
        for model, opt in ((a, lars), (b, sgd)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)


def test_param_groups_split():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 2)
            self.ln = nn.LayerNorm(2)
            self.gn = nn.GroupNorm(2, 4)
            self.temperature = nn.Parameter(torch.ones(1))
            self.frozen = nn.Linear(2, 2)
            self.frozen.requires_grad_(False)

    net = Net()
    groups = param_groups(net, 1e-6)
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-6 and decay["lars_exclude"] is False
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.fc.weight)}
    expected = [net.bn.weight, net.bn.bias, net.fc.bias, net.ln.weight, net.ln.bias]
    expected += [net.gn.weight, net.gn.bias, net.temperature]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(net, -1.0)


def test_scaled_lr_rules():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)  # SimCLR B.1: 0.075 sqrt(B)
    assert scaled_lr(0.075, 256, "sqrt") == pytest.approx(1.2)
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(2e-3, 4096, "none") == 2e-3
    with pytest.raises(ValueError, match=r"lr_scaling.*'cube'"):
        scaled_lr(0.3, 256, "cube")
    with pytest.raises(ValueError, match="global batch"):
        scaled_lr(0.3, 0, "linear")


def test_lr_at_values_and_continuity():
    peak, final, warm, total = 1.0, 0.01, 10, 110
    lrs = [
        lr_at(s, peak_lr=peak, warmup_steps=warm, total_steps=total, final_lr=final)
        for s in range(total + 5)
    ]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5) and lrs[9] == peak
    assert lrs[10] == pytest.approx(peak)  # cosine starts at the peak
    assert lrs[60] == pytest.approx((peak + final) / 2)  # half way through the decay
    assert lrs[35] == pytest.approx(final + 0.5 * (peak - final) * (1 + math.cos(math.pi / 4)))
    assert all(lr == final for lr in lrs[total:])
    # No jumps: a step changes the LR by at most peak/warmup (warmup) or pi/2 * peak/decay.
    steps = [abs(b - a) for a, b in zip(lrs, lrs[1:], strict=False)]
    assert max(steps) <= peak / warm + 1e-12
    assert max(steps[warm:]) <= math.pi / 2 * (peak - final) / (total - warm) + 1e-12
    assert all(b <= a for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))
    # No warmup is allowed and starts at the peak.
    assert lr_at(0, peak_lr=1.0, warmup_steps=0, total_steps=5) == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(step=0, warmup_steps=20, total_steps=10), "warmup_steps"),
        (dict(step=0, warmup_steps=0, total_steps=0), "total_steps"),
        (dict(step=-1, warmup_steps=0, total_steps=10), "step must be >= 0"),
        (dict(step=0, warmup_steps=0, total_steps=10, peak_lr=-1.0), "peak_lr"),
    ],
)
def test_lr_at_validates(kwargs, match):
    kwargs.setdefault("peak_lr", 1.0)
    with pytest.raises(ValueError, match=match):
        lr_at(**kwargs)


def _train(model, opt, start, stop, x):
    for step in range(start, stop):
        set_lr(opt, lr_at(step, peak_lr=0.5, warmup_steps=3, total_steps=10))
        opt.zero_grad()
        (model(x) - 1).pow(2).mean().backward()
        opt.step()


def test_resumed_run_continues_exactly():
    """Train 10 steps straight vs 4 steps + save + fresh objects + load + 6 steps."""
    torch.manual_seed(1)
    x = torch.randn(16, 5, dtype=torch.float64)
    make = lambda m: build_optimizer("lars", param_groups(m, 1e-4), lr=0.0)  # noqa: E731
    straight = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 1)).double()
    resumed = copy.deepcopy(straight)
    _train(straight, make(straight), 0, 10, x)

    opt = make(resumed)
    _train(resumed, opt, 0, 4, x)
    saved = copy.deepcopy((resumed.state_dict(), opt.state_dict()))
    fresh = copy.deepcopy(resumed)
    for p in fresh.parameters():
        nn.init.zeros_(p)
    fresh.load_state_dict(saved[0])
    opt2 = make(fresh)
    opt2.load_state_dict(saved[1])
    _train(fresh, opt2, 4, 10, x)
    for a, b in zip(straight.parameters(), fresh.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert opt2.param_groups[0]["lr"] == lr_at(9, peak_lr=0.5, warmup_steps=3, total_steps=10)


def test_build_optimizer_and_set_lr():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    groups = param_groups(model, 1e-4)
    assert isinstance(build_optimizer("lars", groups, 0.1, 0.9, 1e-6, 0.001), LARS)
    sgd = build_optimizer("sgd", groups, 0.1, 0.9, 1e-6, 0.001)
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["weight_decay"] for g in sgd.param_groups] == [1e-4, 0.0]  # per-group wins
    adamw = build_optimizer("adamw", groups, 1e-3, 0.9, 0.05, 0.001)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.9, 0.999)
    set_lr(adamw, 0.25)
    assert [g["lr"] for g in adamw.param_groups] == [0.25, 0.25]
    with pytest.raises(ValueError, match=r"optim.name must be one of \('lars', 'sgd', 'adamw'\)"):
        build_optimizer("adam", groups, 0.1, 0.9, 1e-6, 0.001)


def test_lars_rejects_bad_settings():
    p = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="trust_coefficient must be > 0, got 0"):
        LARS(p, lr=0.1, trust_coefficient=0.0)
    with pytest.raises(ValueError, match="momentum"):
        LARS(p, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        LARS(p, lr=-1.0)
