"The robust-accuracy harness: worst case, randomized protocol, gradient-masking sanity checks, reports, CLI, bad input."
import json, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from torch import nn
from mimbench.evaluate import RobustReport, robust_accuracy, evaluate_checkpoint, correct_every_pass
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

def test_worst_case_and_monotone(normal_report):
    r = normal_report
    for c in r.worst_case:
        assert r.worst_case[c] <= min(r.accuracy[c].values()) + 1e-12
        assert r.worst_case[c] <= r.clean
    w = [r.worst_case[c] for c in r.accuracy]
    assert w == sorted(w, reverse=True)
    assert r.clean > 0.75
    assert sum(r.robust['2/255']) == round(r.worst_case['2/255'] * r.n)

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

def test_randomized_protocol(quick_model, fmnist_test):
    noisy = Noisy(quick_model, 0.3).eval()
    x, y = fmnist_test.get_batch(range(100))
    torch.manual_seed(0)
    r = robust_accuracy(noisy, (x, y), attacks=[('fgsm', dict(eot=4))], eps='2/255', progress=False, sanity=False)
    assert r.settings['passes'] == 5 and r.settings['randomized']
    torch.manual_seed(0)
    single = correct_every_pass(noisy, x, y, 1).float().mean().item()
    assert r.clean <= single + 0.05        # every pass must be right: never (much) above one lucky pass

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
