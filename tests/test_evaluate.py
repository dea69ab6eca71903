"The robust-accuracy harness: worst case, randomized protocol, gradient-masking sanity checks, reports, CLI, bad input."
import json, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from torch import nn
from mimbench.evaluate import RobustReport, robust_accuracy, evaluate_checkpoint, correct_every_pass
from mimbench.attacks import ATTACKS, predict
from mimbench.models import save_model

BIN = Path(sys.executable).parent
CHEAP = ['pgd', 'apgd-ce', ('square', dict(n_queries=150))]

class Quantized(nn.Module):
    "8-bit input quantisation: round() has a zero gradient, so white-box attacks are blind (gradient masking)."
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x.mul(255).round().div(255))

class Detached(nn.Module):
    "Logits detached from the input and rescaled: no gradient reaches the input at all."
    def __init__(self, m): super().__init__(); self.m = m
    def forward(self, x): return self.m(x).detach() * 3.

class Noisy(nn.Module):
    is_randomized = True
    def __init__(self, m, sigma=0.1): super().__init__(); self.m, self.sigma = m, sigma
    def forward(self, x): return self.m((x + self.sigma * torch.randn_like(x)).clamp(0, 1))

@pytest.fixture(scope='module')
def normal_report(quick_model, fmnist_test):
    return robust_accuracy(quick_model, fmnist_test, attacks=CHEAP, eps=['1/255', '2/255', '4/255'], n=150, progress=False)

def test_worst_case_matches_attacks_run_by_hand(normal_report, quick_model, fmnist_test):
    "Per-attack rows and the per-sample worst case equal an independent recomputation from the attacks themselves."
    r, model = normal_report, quick_model
    x, y = fmnist_test.get_batch(range(r.n))
    ok = predict(model, x) == y
    assert r.clean == pytest.approx(ok.float().mean().item()) and r.clean > 0.75
    for c, eps in [('1/255', 1/255), ('4/255', 4/255)]:
        fooled = {}
        for a in CHEAP:                                 # the harness seeds every attack with seed=0, on the clean-correct points
            name, kw = a if isinstance(a, tuple) else (a, {})
            f = torch.zeros(r.n, dtype=torch.bool)
            f[ok] = predict(model, ATTACKS[name](model, x[ok], y[ok], eps, seed=0, **kw)) != y[ok]
            fooled[name] = f
        for label, name in zip(r.attacks, ['pgd', 'apgd-ce', 'square']):
            assert r.accuracy[c][label] == pytest.approx((ok & ~fooled[name]).float().mean().item()), (c, label)
        robust = ok & ~torch.stack(list(fooled.values())).any(0)
        assert r.robust[c] == robust.int().tolist(), c        # the per-sample union, not the minimum over rows
        assert r.worst_case[c] == pytest.approx(robust.float().mean().item())
    w = [r.worst_case[c] for c in r.accuracy]
    assert w == sorted(w, reverse=True) and w[0] > w[-1]     # a larger budget fools more

def test_sanity_checks_silent_on_a_normal_model(normal_report):
    assert normal_report.warnings == [], normal_report.warnings
    assert normal_report.checks['large_eps_accuracy'] <= 0.05
    assert normal_report.checks['gradients']['zero'] == 0

@pytest.mark.parametrize('wrap', [Quantized, Detached])
def test_sanity_checks_fire_on_gradient_masking(quick_model, fmnist_test, wrap):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        r = robust_accuracy(wrap(quick_model), fmnist_test, attacks=['pgd', ('square', dict(n_queries=150))], eps='4/255',
                            n=100, progress=False)
    text = ' '.join(r.warnings)
    assert 'exactly zero' in text and 'Black-box' in text and 'ε = 0.5' in text, r.warnings
    assert 'Sanity checks failed' in r.to_markdown()

def test_accuracy_rising_with_eps_is_flagged(normal_report):
    r = RobustReport(**{**normal_report.to_dict(), 'warnings': []})
    r.worst_case = {'1/255': 0.5, '2/255': 0.6, '4/255': 0.4}
    from mimbench.evaluate import sanity_warnings
    zero = {c: {a: torch.zeros(r.n, dtype=torch.bool) for a in r.attacks} for c in r.worst_case}
    ws = sanity_warnings(r, ['pgd'], [], zero, 0., None, r.n)
    assert any('rises with ε for worst case' in w for w in ws)

class Flip(nn.Module):
    "A randomized toy with a known answer: class 0 (the label), except with probability q per pass class 1."
    is_randomized = True
    def __init__(self, q): super().__init__(); self.q, self.w = q, nn.Parameter(torch.zeros(()))
    def forward(self, x):
        flip = (torch.rand(len(x)) < self.q).float()
        return torch.stack([1 - flip, flip], 1) + 0 * self.w * x.flatten(1)[:, :1]

def test_randomized_protocol():
    "A point is correct only if every pass is right: (1 − q)^passes, not 1 − q."
    x, y = torch.rand(2000, 1, 4, 4), torch.zeros(2000, dtype=torch.long)
    r = robust_accuracy(Flip(0.2).eval(), (x, y), attacks=['fgsm'], eps='2/255', n=None, progress=False, sanity=False)
    assert r.settings['passes'] == 5 and r.settings['randomized']
    assert r.clean == pytest.approx(0.8 ** 5, abs=0.04)
    r2 = robust_accuracy(Flip(0.2).eval(), (x, y), attacks=['fgsm'], eps='2/255', n=None, passes=2, progress=False, sanity=False)
    assert r2.clean == pytest.approx(0.8 ** 2, abs=0.04)

class NoisyLinear(nn.Module):
    "A randomized toy: a fixed linear classifier on 1×8×8 images with Gaussian noise (σ = 2) on its logits."
    is_randomized = True
    def __init__(self, sigma=2., scale=3.):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin, self.sigma = nn.Linear(64, 10), sigma
        with torch.no_grad(): self.lin.weight.copy_(scale * torch.randn(10, 64, generator=g)); self.lin.bias.zero_()
    def forward(self, x):
        z = self.lin(x.flatten(1) - 0.5)
        return z + self.sigma * torch.randn_like(z)

def test_autoattack_rand_not_weaker_than_its_components():
    "AutoAttack-rand judged one stochastic pass and returned the clean image where it missed: 20.7 % vs 8.7 % before the fix, 8.5 % vs 11.2 % after."
    model = NoisyLinear().eval()
    x = torch.rand(400, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(): y = model.lin(x.flatten(1) - 0.5).argmax(1)
    steps, eot = 10, 4
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        aa = robust_accuracy(model, (x, y), attacks=['autoattack-rand'], eps=0.03, n=None, progress=False, sanity=False,
                             attack_kwargs={'autoattack-rand': {'eot': eot, 'overrides': {'apgd-ce': {'steps': steps},
                                                                                          'apgd-dlr': {'steps': steps}}}})
        parts = robust_accuracy(model, (x, y), attacks=[('apgd-ce', dict(steps=steps, eot=eot)), ('apgd-dlr', dict(steps=steps, eot=eot))],
                                eps=0.03, n=None, progress=False, sanity=False)
    a, w = aa.worst_case['0.03'], parts.worst_case['0.03']
    print(f"\nautoattack-rand {100 * a:.1f} % vs its components' worst case {100 * w:.1f} % (clean {100 * aa.clean:.1f} %)")
    assert 0.3 < aa.clean < 0.6 and w > 0.03           # the toy is in the regime where the bug shows
    assert a <= w + 0.03, (a, w)

class CountGrad(nn.Module):
    "Counts forward passes whose input requires a gradient (an attack's gradient steps)."
    is_randomized = True
    def __init__(self, m): super().__init__(); self.m, self.grad_calls, self.calls = m, 0, 0
    def forward(self, x):
        self.calls += 1; self.grad_calls += x.requires_grad
        return self.m(x)

def test_attack_kwargs_by_attack_name(quick_model, fmnist_test):
    "attack_kwargs={'pgd': ...} reaches ('pgd', {...}) too: before the fix it was looked up by label and dropped."
    x, y = fmnist_test.get_batch(range(20))
    m = CountGrad(quick_model).eval()
    robust_accuracy(m, (x, y), attacks=[('pgd', {'steps': 5})], attack_kwargs={'pgd': {'eot': 2}}, eps='2/255', passes=1,
                    progress=False, sanity=False)
    assert m.grad_calls == 5 * 2                         # not 5 × 20 (the randomized default EOT)

def test_attack_kwargs_errors_before_any_work(quick_model, fmnist_test):
    x, y = fmnist_test.get_batch(range(10))
    m = CountGrad(quick_model).eval()
    bad = [(dict(attacks=['pgd'], attack_kwargs={'pgdd': {'eot': 2}}), "attack_kwargs names 'pgdd'"),
           (dict(attacks=['pgd', 'fgsm'], attack_kwargs={'apgd-ce': {'steps': 2}}), "names 'apgd-ce', which is not in the attack list"),
           (dict(attacks=[('pgd', {'steps': 5})], attack_kwargs={'pgd': {'stpes': 2}}), "'pgd' takes no setting 'stpes'"),
           (dict(attacks=[('apgd-ce', {'step': 5})]), "'apgd-ce' takes no setting 'step'"),
           (dict(attacks=['fgsm'], attack_kwargs={'fgsm': {'steps': 3}}), "'fgsm' takes no setting 'steps'"),
           (dict(attacks=[('pgd', {'steps': 5})], attack_kwargs={'pgd': {'steps': 10}}), 'given both'),
           (dict(attacks=['apgd-t'], attack_kwargs={'apgd-t': {'passes': 2}}), 'set by the harness'),
           (dict(attacks=['autoattack'], attack_kwargs={'autoattack': {'overrides': {'apgd-dlr': {}}}}),
            "'apgd-dlr', which is not in AutoAttack 'standard'"),
           (dict(attacks=[('autoattack-rand', {'overrides': {'apgd-ce': {'n_queries': 5}}})]), "'apgd-ce' takes no setting 'n_queries'")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg): robust_accuracy(m, (x, y), eps='2/255', progress=False, **kw)
    assert m.calls == 0

def test_report_json_markdown_plot(normal_report, tmp_path):
    s = normal_report.to_json(tmp_path / 'r.json')
    back = RobustReport.from_json(tmp_path / 'r.json')
    assert back.worst_case == normal_report.worst_case and json.loads(s)['norm'] == 'linf'
    md = normal_report.to_markdown()
    assert '**worst case**' in md and 'ε = 2/255' in md and 'Sanity checks passed' in md
    fig = normal_report.plot(tmp_path / 'r.png')
    assert (tmp_path / 'r.png').stat().st_size > 1000 and fig is not None

def test_bad_inputs(quick_model, fmnist_test):
    x, y = fmnist_test.get_batch(range(10))
    with pytest.raises(KeyError, match="Did you mean 'apgd-ce'"): robust_accuracy(quick_model, (x, y), attacks=['apgd-cd'])
    with pytest.raises(ValueError, match='8/255'): robust_accuracy(quick_model, (x, y), eps=8)
    with pytest.raises(ValueError, match='Unknown norm'): robust_accuracy(quick_model, (x, y), norm='l1')
    with pytest.raises(ValueError, match=r'shape \(10,\)'): robust_accuracy(quick_model, (x, y[:, None].repeat(1, 2)))
    with pytest.raises(ValueError, match='divide by 255'): robust_accuracy(quick_model, (x * 255, y))
    with pytest.raises(ValueError, match='n must be'): robust_accuracy(quick_model, (x, y), n=-5)
    with pytest.raises(ValueError, match='batch_size must be'): robust_accuracy(quick_model, (x, y), batch_size=0)
    with pytest.raises(ValueError, match='Cannot parse'): robust_accuracy(quick_model, (x, y), eps='3/0')
    with pytest.raises(ValueError, match='passes must be'): robust_accuracy(quick_model, (x, y), passes=0)   # not 100 %
    with pytest.raises(ValueError, match='No ε given'): robust_accuracy(quick_model, (x, y), eps=[])
    unchecked = robust_accuracy(quick_model, (x, y), attacks=['fgsm'], eps='1/255', progress=False, sanity=False)
    assert 'not run' in unchecked.to_markdown() and 'passed' not in unchecked.to_markdown()
    quick_model.train()
    try:
        with pytest.warns(UserWarning, match='train mode'):
            robust_accuracy(quick_model, (x, y), attacks=['fgsm'], eps='1/255', progress=False, sanity=False)
        assert quick_model.training
    finally: quick_model.eval()

def test_evaluate_checkpoint_and_cli(quick_model, tmp_path):
    ckpt = tmp_path / 'run' / 'model.safetensors'
    save_model(ckpt, quick_model, train_config={'dataset': 'fashion-mnist', 'channels': 1})
    r = evaluate_checkpoint(ckpt, attacks='fgsm', eps='1/255,2/255', n=60, out=tmp_path / 'out', progress=False)
    assert r.n == 60 and r.model == 'run' and (tmp_path / 'out' / 'robust_accuracy.png').exists()
    p = subprocess.run([str(BIN / 'mimbench'), 'eval', str(ckpt.parent), '--attacks', 'fgsm,pgd', '--eps', '2/255',
                        '--n', '40', '--no-progress'], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert '**worst case**' in p.stdout
    rep = json.loads((ckpt.parent / 'robust_accuracy.json').read_text())
    assert rep['n'] == 40 and rep['attacks'] == ['fgsm', 'pgd']
    p = subprocess.run([str(BIN / 'mimbench'), 'eval', str(tmp_path / 'missing')], capture_output=True, text=True)
    assert p.returncode == 1 and 'mimbench eval: error: No checkpoint' in p.stderr and 'Traceback' not in p.stderr
