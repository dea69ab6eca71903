"Attacks: ball/box/mask/identity properties for every attack, and agreement with torchattacks on a trained model."
import warnings
import pytest, torch
import torchattacks
from hypothesis import given, settings, strategies as st, HealthCheck
from mimbench.attacks import (ATTACKS, perturb, run_attack, lp_norm, predict, fgsm, pgd, mifgsm, apgd_ce, autoattack,
                              classifier_loss, huang_l2_eps, pixel_mask, square)
from torch import nn
from mimbench.models import create_vit

FAST = {'bim': dict(steps=3), 'pgd': dict(steps=3), 'mifgsm': dict(steps=3), 'pgd-margin': dict(steps=3),
        'cw-l2': dict(steps=3, binary_search_steps=2), 'apgd-ce': dict(steps=4),
        'apgd-dlr': dict(steps=4), 'apgd-t': dict(steps=3, n_target_classes=2), 'apgd-t-ce': dict(steps=3, n_target_classes=2),
        'square': dict(n_queries=15), 'fab-t': dict(steps=3, n_target_classes=2), 'pgd-l2': dict(steps=3),
        'autoattack': dict(overrides={'apgd-ce': dict(steps=3), 'apgd-t': dict(steps=2, n_target_classes=2),
                                      'fab-t': dict(steps=2, n_target_classes=2), 'square': dict(n_queries=10)}),
        'autoattack-rand': dict(eot=2, overrides={'apgd-ce': dict(steps=2), 'apgd-dlr': dict(steps=2)}),
        'pgd-mi': dict(steps=3), 'pgd-fea': dict(steps=3),
        'ttfp-adaptive': dict(steps=3)}   # on a classifier that is no TTFP it runs its base attack (apgd-ce)
NAMES = sorted(ATTACKS)
_models = {}

def tiny_model(c, s):
    "A random micro ViT for `c` channels and `s`×`s` images (cached)."
    if (c, s) not in _models:
        torch.manual_seed(0)
        _models[c, s] = create_vit('micro', img_size=s, patch_size=4, in_chans=c, depth=1).eval()
    return _models[c, s]

def in_ball(xa, x, eps, norm):
    if norm == 'linf': return bool((xa - x).abs().max() <= eps)          # exact, no tolerance
    return bool((lp_norm(xa - x, 'l2') <= eps * (1 + 1e-5) + 1e-7).all())

def test_every_attack_is_tested():
    assert set(FAST) | {'fgsm'} == set(ATTACKS)

@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(NAMES), norm=st.sampled_from(['linf', 'l2']), n=st.integers(1, 3), c=st.sampled_from([1, 3]),
       s=st.sampled_from([8, 16]), frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_ball_box_and_inputs_untouched(name, norm, n, c, s, frac, seed):
    spec = ATTACKS[name]
    if norm not in spec.norms: norm = spec.norms[0]
    eps = frac * (0.3 if norm == 'linf' else 3.0)
    model = tiny_model(c, s)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, s, s, generator=g); x[0, :, :2] = 0.; x[-1, :, -2:] = 1.   # pixels on the box faces
    y = torch.randint(0, 10, (n,), generator=g)
    x0, y0 = x.clone(), y.clone()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        xa = run_attack(name, model, x, y, eps, norm, **FAST.get(name, {}))
    assert xa.shape == x.shape and xa.dtype == x.dtype
    assert torch.equal(x, x0) and torch.equal(y, y0), 'inputs modified in place'
    assert in_ball(xa, x, eps, norm), (name, norm, eps, lp_norm(xa - x, norm).max().item())
    assert xa.min() >= 0 and xa.max() <= 1
    assert all(p.grad is None and p.requires_grad for n_, p in model.named_parameters() if n_ != 'pos_embed')
    if eps == 0: assert torch.equal(xa, x)

@settings(max_examples=50, deadline=None)
@given(norm=st.sampled_from(['linf', 'l2']), rule=st.sampled_from(['pgd', 'apgd']), seed=st.integers(0, 2**16),
       ratio=st.floats(0, 1), momentum=st.sampled_from([0., 1.]), patch=st.booleans())
def test_masked_out_patches_are_bit_identical(norm, rule, seed, ratio, momentum, patch):
    model = tiny_model(3, 16)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(2, 3, 16, 16, generator=g), torch.randint(0, 10, (2,), generator=g)
    mask = (torch.rand(2, 16, generator=g) < ratio).int()          # 16 patches of 4×4
    m = pixel_mask(mask, x)
    eps = 0.2 if norm == 'linf' else 2.
    xa = perturb(classifier_loss(model, y), x, eps, norm, steps=4, step_rule=rule, momentum=momentum if rule == 'pgd' else 0.,
                 mask=mask if patch else m.float(), generator=g)
    assert torch.equal(xa[~m.expand_as(x)], x[~m.expand_as(x)])
    assert in_ball(xa, x, eps, norm)

@pytest.mark.parametrize('name', NAMES)
def test_eps_zero_is_identity(name):
    model, x, y = tiny_model(1, 8), torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    spec = ATTACKS[name]
    xa = run_attack(name, model, x, y, 0., spec.norms[0], **FAST.get(name, {}))
    assert torch.equal(xa, x)

def test_steps_zero_and_eps_zero_bit_exact():
    x = torch.rand(3, 1, 8, 8)
    f = lambda xa: xa.flatten(1).sum(1)
    for kw in [dict(steps=0), dict(eps=0.)]:
        for rule in ['pgd', 'apgd']:
            xa = perturb(f, x, **{'eps': 0.1, 'steps': 5, 'step_rule': rule, **kw})
            assert torch.equal(xa, x) and xa is not x

def test_eot_averages_over_calls():
    calls = []
    def loss_fn(xa):
        calls.append(1); return (xa * torch.randn_like(xa)).flatten(1).sum(1)
    perturb(loss_fn, torch.rand(2, 1, 4, 4), 0.1, steps=3, eot=5)
    assert len(calls) == 15

def test_randomized_models_get_eot_by_default():
    base = tiny_model(1, 8)
    class Rand(torch.nn.Module):
        is_randomized = True
        def __init__(s): super().__init__(); s.m, s.calls = base, 0
        def forward(s, x): s.calls += 1; return s.m((x + 0.01 * torch.randn_like(x)).clamp(0, 1))
    r = Rand().eval()
    fgsm(r, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 0.1)
    assert r.calls == 20
    r.calls = 0; fgsm(r, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 0.1, eot=3)
    assert r.calls == 3

def test_nan_gradients_do_not_break_the_ball():
    x = torch.rand(2, 1, 4, 4)
    xa, info = perturb(lambda xa: (xa.sqrt() * torch.nan).flatten(1).sum(1), x, 0.1, steps=3, return_info=True)
    assert torch.isfinite(xa).all() and info.nonfinite_grad.all() and in_ball(xa, x, 0.1, 'linf')

def test_bad_inputs():
    model, x, y = tiny_model(1, 8), torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match='8/255'): pgd(model, x, y, 8)
    with pytest.raises(ValueError, match='Unknown norm'): pgd(model, x, y, 0.1, 'l1')
    with pytest.raises(KeyError, match="Did you mean 'pgd'"): run_attack('pgdd', model, x, y, 0.1)
    with pytest.raises(ValueError, match=r'shape \(2,\)'): pgd(model, x, y[:1], 0.1)
    with pytest.raises(ValueError, match='one-hot'): pgd(model, x, torch.eye(10)[y], 0.1)
    with pytest.raises(ValueError, match='255'): pgd(model, x * 255, y, 0.1)
    with pytest.raises(ValueError, match='alpha must be > 0'): pgd(model, x, y, 0.1, alpha=-0.01)   # would descend the loss
    with pytest.raises(ValueError, match='n_queries'): square(model, x, y, 0.1, n_queries=-5)
    model.train()
    with pytest.warns(UserWarning, match='train mode'): pgd(model, x, y, 0.1, steps=1)
    assert model.training
    model.eval()

# ---- restarts keep, per sample, a successful restart, else the highest-loss one ----

class Lucky(nn.Module):
    "Fooled (class 1) only where the start put pixel (0, 0) above 0.5 + 0.8ε: 10 % of PGD's uniform starts; no gradient to follow."
    def __init__(self, eps): super().__init__(); self.t, self.w = 0.5 + 0.8 * eps, nn.Parameter(torch.zeros(()))
    def forward(self, x):
        hit = (x[:, 0, 0, 0] > self.t).float()
        return torch.stack([1 - hit, hit], 1) * 2

@pytest.mark.parametrize('name', ['pgd', 'pgd-margin', 'apgd-ce'])
def test_restarts_keep_a_successful_restart(name):
    "Five restarts leave 0.9⁵ = 59 % robust, not the last restart's 90 % (APGD: its own start distribution, p⁵)."
    eps, n = 0.1, 3000
    model, x, y = Lucky(eps).eval(), torch.full((n, 1, 4, 4), 0.5), torch.zeros(n, dtype=torch.long)
    one = (predict(model, run_attack(name, model, x, y, eps, steps=2, restarts=1)) == y).float().mean().item()
    five = (predict(model, run_attack(name, model, x, y, eps, steps=2, restarts=5)) == y).float().mean().item()
    print(f"\n{name}: robust after 1 restart {one:.3f}, after 5 restarts {five:.3f} (expected 0.9, {0.9 ** 5:.3f})")
    if name != 'apgd-ce': assert abs(one - 0.9) < 0.03, one           # APGD starts on the sphere, not in the cube
    assert abs(five - one ** 5) < 0.03, (one, five)

@pytest.mark.parametrize('momentum', [0., 1.])
def test_restarts_keep_the_highest_loss(momentum):
    "Without success flags the engine keeps the restart of highest loss: the best of 5 uniform starts, E = 2/3 ε, not the last (E = 0)."
    x, eps = torch.full((3000, 1, 2, 2), 0.5), 0.1
    start = lambda xa: (xa[:, 0, 0, 0] - 0.5).detach()        # rewards only where the random start put the first pixel
    d = perturb(start, x, eps, steps=1, restarts=5, momentum=momentum)[:, 0, 0, 0] - 0.5
    assert d.mean().item() / eps == pytest.approx(2 * 5 / 6 - 1, abs=0.03)

def test_one_restart_is_plain_pgd(batch):
    "With one restart PGD takes no extra scoring pass and returns the last iterate, as torchattacks' PGD does."
    model, x, y = batch
    x, y = x[:100], y[:100]
    calls = []
    h = model.register_forward_hook(lambda *a: calls.append(1))
    try: ours = pgd(model, x, y, 4/255, alpha=1/255, steps=10)
    finally: h.remove()
    assert len(calls) == 10
    torch.manual_seed(0)
    theirs = torchattacks.PGD(model, eps=4/255, alpha=1/255, steps=10, random_start=True)(x, y)
    assert _acc(model, ours, y) == pytest.approx(_acc(model, theirs, y), abs=3.0)

# ---- randomized models: candidates judged with every pass ----

class Noisy(nn.Module):
    is_randomized = True
    def __init__(self, m, sigma): super().__init__(); self.m, self.sigma = m, sigma
    def forward(self, x): return self.m((x + self.sigma * torch.randn_like(x)).clamp(0, 1))

@pytest.mark.parametrize('name', ['apgd-t', 'square', 'autoattack', 'autoattack-rand'])
def test_verdict_of_candidate_attacks(name):
    "return_candidates: the verdict matches the model on a deterministic model, and every candidate stays in the ball."
    model, eps = tiny_model(1, 8), 0.1
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    y = predict(model, x)                             # all correct at first: the attacks have work to do
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = run_attack(name, model, x, y, eps, return_candidates=True, **FAST[name])
    assert torch.equal(res.fooled, predict(model, res.x_adv) != y)
    for idx, xc in res.candidates: assert in_ball(xc, x[idx], eps, 'linf')

def test_apgd_t_judges_every_pass():
    "On a randomized model APGD-T's verdict uses all passes: a point one lucky pass gets right is not robust."
    model = Noisy(tiny_model(1, 8), 0.3).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    res = run_attack('apgd-t', model, x, y, 0.05, steps=2, n_target_classes=2, eot=2, return_candidates=True)
    again = ~torch.stack([predict(model, res.x_adv) == y for _ in range(5)]).all(0)
    assert res.fooled.float().mean().item() == pytest.approx(again.float().mean().item(), abs=0.15)

# ---- Carlini–Wagner ℓ2 against torchattacks' CW ----

def test_cw_l2_agrees_with_torchattacks(batch):
    "Same c, κ, steps, lr and one binary-search round: mean ℓ2 of successes within 10 %, success rate within 2 points."
    model, x, y = batch
    x, y = x[:100], y[:100]
    ok = predict(model, x) == y
    ours = run_attack('cw-l2', model, x, y, None, 'l2', c=1., kappa=0., steps=50, lr=0.01, binary_search_steps=1)
    theirs = torchattacks.CW(model, c=1, kappa=0, steps=50, lr=0.01)(x, y)
    out = []
    for xa in (ours, theirs):
        s = (predict(model, xa) != y) & ok
        out.append((100 * s.float().sum().item() / ok.sum().item(), lp_norm(xa - x, 'l2')[s].mean().item()))
    (sa, la), (sb, lb) = out
    AGREEMENT['cw-l2'] = (sa, sb)
    print(f"\ncw-l2: success ours {sa:.1f} % vs torchattacks {sb:.1f} %, mean ℓ2 {la:.4f} vs {lb:.4f}")
    assert abs(sa - sb) <= 2 and abs(la - lb) <= 0.1 * lb, out
    # a second round of the binary search (c = 1 → 0.5 where round 1 succeeded) keeps every success and shrinks them
    bs = run_attack('cw-l2', model, x, y, None, 'l2', c=1., kappa=0., steps=50, lr=0.01, binary_search_steps=2)
    s1, s2 = (predict(model, ours) != y) & ok, (predict(model, bs) != y) & ok
    assert (s2 | ~s1).all()
    d1, d2 = lp_norm(ours - x, 'l2')[s1], lp_norm(bs - x, 'l2')[s1]
    assert (d2 <= d1 + 1e-6).all() and d2.mean() < 0.97 * d1.mean(), (d1.mean(), d2.mean())

def test_huang_l2_eps():
    assert huang_l2_eps(0.001, (3, 32, 32)) == pytest.approx(0.001 * 55.4256, rel=1e-5)

# ---- agreement with torchattacks on a trained model and 500 real test images ----

@pytest.fixture(scope='module')
def batch(quick_model, fmnist_test):
    x, y = fmnist_test.get_batch(range(500))
    return quick_model, x, y

def _acc(model, xa, y): return (predict(model, xa, 250) == y).float().mean().item() * 100

AGREEMENT = {}

def test_fgsm_identical(batch):
    model, x, y = batch
    ours, theirs = fgsm(model, x, y, 4/255), torchattacks.FGSM(model, eps=4/255)(x, y)
    # identical up to the last-ulp nudge that keeps ours inside the ball
    assert (ours - theirs).abs().max() <= 1e-6
    assert _acc(model, ours, y) == _acc(model, theirs, y)
    AGREEMENT['fgsm'] = (_acc(model, ours, y), _acc(model, theirs, y))

@pytest.mark.parametrize('name', ['pgd', 'mifgsm', 'apgd-ce'])
def test_agreement_within_1p5_points(batch, name):
    model, x, y = batch
    eps = 4/255
    if name == 'pgd':
        ours = pgd(model, x, y, eps, alpha=1/255, steps=10)
        torch.manual_seed(0); theirs = torchattacks.PGD(model, eps=eps, alpha=1/255, steps=10, random_start=True)(x, y)
    elif name == 'mifgsm':
        ours = mifgsm(model, x, y, eps, alpha=1/255, steps=10, decay=1.0)
        theirs = torchattacks.MIFGSM(model, eps=eps, alpha=1/255, steps=10, decay=1.0)(x, y)
    else:
        ours = apgd_ce(model, x, y, eps, steps=25)
        theirs = torchattacks.APGD(model, eps=eps, steps=25, n_restarts=1, loss='ce', seed=0)(x, y)
    a, b = _acc(model, ours, y), _acc(model, theirs, y)
    AGREEMENT[name] = (a, b)
    print(f"\n{name}: ours {a:.2f} % vs torchattacks {b:.2f} %")
    assert abs(a - b) <= 1.5, (a, b)

def test_autoattack_not_weaker_than_torchattacks(batch):
    model, x, y = batch
    x, y, eps = x[:40], y[:40], 2/255          # Square's 5,000 queries and FAB-T's 9×100 steps dominate: keep n small
    ours = autoattack(model, x, y, eps)
    theirs = torchattacks.AutoAttack(model, norm='Linf', eps=eps, version='standard', n_classes=10, seed=0)(x, y)
    a, b = _acc(model, ours, y), _acc(model, theirs, y)
    AGREEMENT['autoattack'] = (a, b)
    print(f"\nautoattack: ours {a:.2f} % vs torchattacks {b:.2f} %")
    assert a <= b + 1.0, (a, b)
    assert (ours - x).abs().max() <= eps
