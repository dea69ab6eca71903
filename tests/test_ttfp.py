"Test-time frequency-domain prompting (TTFP): prototypes, prompts, gradients, prompt training through the trainer, checkpoints, evaluation, CLI."
import json, subprocess, sys
from pathlib import Path
import pytest, torch
from torch import nn
from mimbench.frequency import fft2c, frequency_grid, fourier_basis
from mimbench.ttfp import TTFP, PromptObjective, build_ttfp, fit_ttfp, ttfp_config, load_ttfp, evaluate_ttfp, ttfp_markdown
from mimbench.train import TrainConfig, train, train_data, run_dir, read_metrics
from mimbench.evaluate import robust_accuracy
from mimbench.models import save_model, load_model

BIN = Path(sys.executable).parent

def clusters(n_per=20, k=3, seed=0):
    "Images whose (constructed) features sit in k well-separated clusters: feature = mean of each image's k vertical strips."
    g = torch.Generator().manual_seed(seed)
    x, lab = [], []
    for c in range(k):
        base = torch.full((n_per, 1, 30, 30), 0.2) + 0.02 * torch.rand(n_per, 1, 30, 30, generator=g)
        base[..., c * 10:(c + 1) * 10] += 0.6
        x.append(base); lab += [c] * n_per
    return torch.cat(x).clamp(0, 1), torch.tensor(lab)

class StripClassifier(nn.Module):
    "Logits = brightness of three vertical strips (class c = brightest strip c)."
    def __init__(self): super().__init__(); self.w = nn.Parameter(torch.ones(1))
    def forward(self, x): return self.w * torch.stack([x[..., 10 * c:10 * (c + 1)].mean((1, 2, 3)) for c in range(3)], 1) * 10

def test_ttfp_picks_the_right_prototype_and_keeps_its_band():
    x, lab = clusters()
    clf = StripClassifier()
    feats = lambda z: torch.stack([z[..., 10 * c:10 * (c + 1)].mean((1, 2, 3)) for c in range(3)], 1) - 0.4
    t = build_ttfp(clf, (x, lab), k=3, band=(3, 9), n=None, features=feats)
    assert t.img_size == 30 and t.band == (3, 9)
    sel = t.select(x)
    # each constructed cluster maps to one prototype, and different clusters to different prototypes
    assert all(len(set(sel[lab == c].tolist())) == 1 for c in range(3)) and len(set(sel.tolist())) == 3
    for c in range(3):                                          # the prototype chosen is the nearest one
        f = torch.nn.functional.normalize(feats(x[lab == c][:1]), dim=1)
        assert sel[lab == c][0] == (f @ t.prototypes.T).argmax()
    with torch.no_grad(): t.prompts.normal_(0, 1)                      # any prompts: band and budget are TTFP's doing
    d = t.prompt_images().detach()
    r = frequency_grid(30, 30)[2]
    outside = fft2c(d).abs()[..., (r <= 3) | (r > 9)]
    assert outside.max() < 1e-5 * fft2c(d).abs().max()                                   # the prompt stays in its band
    assert (d.flatten(1).norm(dim=1) <= t.budget * (1 + 1e-5)).all()                      # and within its ℓ2 budget
    k = t.select(x)
    torch.testing.assert_close(t.add_prompt(x, k), (x + d[k]).clamp(0, 1), atol=1e-5, rtol=0)

def test_ttfp_gradient_is_the_chosen_prompts_gradient(quick_model, fmnist_test):
    from mimbench.data import load_batch
    x, y = load_batch(fmnist_test, torch.arange(8))
    x = x * 0.5 + 0.25
    t = TTFP(quick_model, torch.randn(5, quick_model.embed_dim), prompt_rms=2 / 255)
    with torch.no_grad(): t.prompts.normal_(0, 1)
    xr = x.clone().requires_grad_()
    g, = torch.autograd.grad(torch.nn.functional.cross_entropy(t(xr), y), xr)
    xp = (x + t.prompt_images().detach()[t.select(x)]).requires_grad_()
    g_ref, = torch.autograd.grad(torch.nn.functional.cross_entropy(quick_model(xp), y), xp)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)
    t.selection_tau, t.clip_bpda = 0.05, True                    # adaptive: same values, more gradient
    with torch.no_grad(): torch.testing.assert_close(t(x), quick_model(xp.detach()), atol=1e-5, rtol=1e-4)

def test_clip_bpda_reaches_saturated_pixels(quick_model):
    t = TTFP(quick_model, torch.randn(2, quick_model.embed_dim), prompt_rms=32 / 255).eval()
    with torch.no_grad(): t.prompts.normal_(0, 1)
    x = torch.zeros(2, 1, 32, 32)                               # black images: the prompt's negative half is clipped away
    g = lambda: torch.autograd.grad(t(xr := x.clone().requires_grad_()).logsumexp(1).sum(), xr)[0]
    dead = (t.prompt_images().detach()[t.select(x)] < -1e-4)
    exact = g()
    assert exact[dead].abs().max() < 1e-6 * exact.abs().max()    # the true model is flat in those pixels
    t.clip_bpda = True
    bpda = g()
    assert (bpda[dead] != 0).float().mean() > 0.9                # BPDA lets the attack see them

def test_ttfp_clean_accuracy_path(tmp_path, quick_model, fmnist_test):
    t = build_ttfp(quick_model, fmnist_test, k=4, n=300)
    rep0 = robust_accuracy(quick_model, fmnist_test, attacks=['fgsm'], eps='1/255', n=100, sanity=False, progress=False)
    rep = robust_accuracy(t, fmnist_test, attacks=['fgsm'], eps='1/255', n=100, sanity=False, progress=False)
    assert rep.clean == rep0.clean                               # zero prompts: exactly the classifier
    ckpt = save_model(tmp_path / 'clf.safetensors', quick_model)
    t, run = fit_ttfp(ckpt, dict(k=4, n_train=300, batch_size=100, objective='clean', device='cpu'), tmp_path, progress=False)
    assert run.metrics[0]['clean_acc'] > 0.6 and t.prompt_images().abs().sum() > 0
    rep1 = robust_accuracy(t, fmnist_test, attacks=['fgsm'], eps='1/255', n=100, sanity=False, progress=False)
    assert rep1.clean >= rep0.clean - 0.1 and not rep1.settings['randomized']
    with pytest.raises(ValueError, match='objective'): fit_ttfp(ckpt, dict(objective='robust'), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"Unknown TTFP setting\(s\) \['epoch'\]"): ttfp_config(ckpt, tmp_path, epoch=2)

SMALL = dict(k=3, n_train=400, batch_size=100, epochs=2, steps=1, device='cpu')

class Spy:
    "Records the TTFP that the trainer builds (`finetune_model`) and the modes it is in at every loss call."
    def __init__(self, monkeypatch, fail_at=None):
        self.models, self.modes, self.calls, self.fail_at = [], [], 0, fail_at
        build, loss = PromptObjective.finetune_model, PromptObjective.loss
        def finetune_model(obj, cfg, init, data): self.models.append(build(obj, cfg, init, data)); return self.models[-1]
        def spy_loss(obj, model, x, y):
            self.calls += 1
            if self.calls == self.fail_at: raise KeyboardInterrupt('killed mid-run')
            self.modes.append((model.training, model.classifier.training, any(m.training for m in model.classifier.modules())))
            return loss(obj, model, x, y)
        monkeypatch.setattr(PromptObjective, 'finetune_model', finetune_model)
        monkeypatch.setattr(PromptObjective, 'loss', spy_loss)

def test_prompt_training_is_a_trainer_run(tmp_path, quick_model, monkeypatch):
    "Prompts trained by `train`: only the prompts change, the loss falls, the classifier stays frozen and in eval mode."
    ckpt = save_model(tmp_path / 'clf.safetensors', quick_model)
    spy = Spy(monkeypatch)
    t, run = fit_ttfp(ckpt, {**SMALL, 'objective': 'clean'}, tmp_path / 'runs', progress=False)
    assert run.dir == run_dir(run.config) and run.dir.name.startswith('finetune-ttfp-fashion-mnist-')
    assert (run.config.task, run.config.recipe, run.result['steps']) == ('finetune', 'ttfp', 8)
    assert len(spy.modes) == 8 and set(spy.modes) == {(True, False, False)}      # TTFP trains, its classifier never does
    trained = spy.models[0]
    ref = quick_model.state_dict()
    for name, v in trained.classifier.state_dict().items(): assert torch.equal(v, ref[name]), name   # bit-identical
    assert all(not p.requires_grad for p in trained.classifier.parameters())
    built = build_ttfp(quick_model, train_data(run.config), 3, n=5000, seed=0)     # what the run started from
    assert torch.equal(trained.prototypes, built.prototypes) and torch.equal(trained.mask, built.mask)
    assert trained.prompts.abs().sum() > 0                                       # the prompts, and only they, moved
    x, y = train_data(run.config).get_batch(range(400))
    po = PromptObjective('clean')
    with torch.no_grad():
        after = po.loss(trained.eval(), x, y)['loss']
        assert after < po.loss(built.eval(), x, y)['loss'] - 0.02                # prompt training lowers the prompt loss
        torch.testing.assert_close(t(x[:64]), trained(x[:64]), rtol=0, atol=0)  # the loaded TTFP is the trained one
    assert isinstance(load_model(run.dir)[0], TTFP)

def test_ttfp_run_is_cached(tmp_path, quick_model, monkeypatch):
    "A second `fit_ttfp` with the same settings (defaults spelled out or not) trains nothing: same run, same metrics."
    ckpt = save_model(tmp_path / 'clf.safetensors', quick_model)
    t1, run1 = fit_ttfp(ckpt, SMALL, tmp_path, progress=False)
    spy = Spy(monkeypatch)
    t2, run2 = fit_ttfp(ckpt, {**SMALL, 'objective': 'mixed', 'eps': 8 / 255, 'band': (4, None)}, tmp_path, progress=False)
    assert (spy.models, spy.calls) == ([], 0)
    assert run2.dir == run1.dir and run2.metrics == run1.metrics
    for a, b in zip(t1.state_dict().values(), t2.state_dict().values()): assert torch.equal(a, b)

def test_ttfp_run_resumes_exactly(tmp_path, quick_model, monkeypatch):
    "Killed mid-run and started again, prompt training continues from its checkpoint and ends with the same prompts."
    ckpt = save_model(tmp_path / 'clf.safetensors', quick_model)
    s = {**SMALL, 'ckpt_every': 2}
    ref, _ = fit_ttfp(ckpt, s, tmp_path / 'ref', progress=False)
    with monkeypatch.context() as m:
        Spy(m, fail_at=7)
        with pytest.raises(KeyboardInterrupt): fit_ttfp(ckpt, s, tmp_path / 'cut', progress=False)
    d = run_dir(ttfp_config(ckpt, tmp_path / 'cut', **s))
    assert (d / 'checkpoint.safetensors').exists() and not (d / 'result.json').exists()
    spy = Spy(monkeypatch)
    t, run = fit_ttfp(ckpt, s, tmp_path / 'cut', progress=False)
    assert spy.calls == 2                                                       # steps 7 and 8 only
    assert torch.equal(t.prompts, ref.prompts)
    no_time = lambda recs: [{k: v for k, v in r.items() if k != 'time'} for r in recs]
    assert no_time(run.metrics) == no_time(read_metrics(run_dir(ttfp_config(ckpt, tmp_path / 'ref', **s))))

def test_ttfp_recipe_needs_a_classifier(tmp_path):
    "The 'ttfp' recipe refuses to start without a classifier to put its prompts around."
    with pytest.raises(ValueError, match='set init to a fine-tuned run'):
        train(TrainConfig(task='finetune', recipe='ttfp', n_train=64, batch_size=32, out=str(tmp_path), progress=False))
    from mimbench.models import create_mae
    save_model(tmp_path / 'mae.safetensors', create_mae('micro', 32, 4, 1))
    with pytest.raises(ValueError, match="a 'mae' model"):
        fit_ttfp(tmp_path / 'mae.safetensors', dict(n_train=64, batch_size=32), tmp_path, progress=False)

def test_train_mode_keeps_the_classifier_in_eval_mode():
    "`TTFP.train()` (what the trainer calls each epoch) leaves dropout and batch norm of the classifier off."
    clf = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(1024, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))
    t = TTFP(clf, torch.randn(2, 3)).train()
    assert t.training and not any(m.training for m in clf.modules())
    x = torch.rand(8, 1, 32, 32)
    stats = clf[3].running_mean.clone()
    with torch.no_grad(): torch.testing.assert_close(t(x), t(x), rtol=0, atol=0)
    assert torch.equal(clf[3].running_mean, stats)
    assert not t.eval().training

def test_save_load_roundtrip(tmp_path, quick_model, fmnist_test):
    t = build_ttfp(quick_model, fmnist_test, k=3, n=100, band=(2, None))
    with torch.no_grad(): t.prompts.normal_()
    save_model(tmp_path / 'p.safetensors', t)
    t2 = load_ttfp(tmp_path / 'p.safetensors', quick_model)
    assert t2.band == (2, None) and t2.k == 3
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad(): torch.testing.assert_close(t2(x), t(x))
    t3, meta = load_model(tmp_path / 'p.safetensors')                 # an ordinary model checkpoint, classifier included
    assert isinstance(t3, TTFP) and meta['config']['kind'] == 'ttfp' and load_ttfp(tmp_path / 'p.safetensors').k == 3
    with torch.no_grad(): torch.testing.assert_close(t3(x), t(x))
    save_model(tmp_path / 'clf.safetensors', quick_model)
    from mimbench.models import CheckpointError
    with pytest.raises(CheckpointError, match='not TTFP'): load_ttfp(tmp_path / 'clf.safetensors', quick_model)
    with pytest.raises(CheckpointError, match="'ttfp' model is needed"): load_ttfp(tmp_path / 'clf.safetensors')

def test_toy_classifier_without_config_roundtrips(tmp_path):
    "A TTFP around a module with no mimbench config is saved too, and loaded with the classifier given."
    x, lab = clusters()
    feats = lambda z: torch.stack([z[..., 10 * c:10 * (c + 1)].mean((1, 2, 3)) for c in range(3)], 1) - 0.4
    t = build_ttfp(StripClassifier(), (x, lab), k=3, band=(3, 9), n=None, features=feats)
    with torch.no_grad(): t.prompts.normal_()
    save_model(tmp_path / 'toy.safetensors', t)
    with pytest.raises(ValueError, match='load_ttfp\\(path, classifier\\)'): load_model(tmp_path / 'toy.safetensors')
    with pytest.warns(UserWarning, match='custom feature'): load_ttfp(tmp_path / 'toy.safetensors', StripClassifier())
    t2 = load_ttfp(tmp_path / 'toy.safetensors', StripClassifier(), features=feats)
    with torch.no_grad(): torch.testing.assert_close(t2(x), t(x))

def test_evaluate_ttfp_worst_case_is_the_per_image_and(quick_model, fmnist_test):
    "TTFP's robust accuracy counts an image only if it survives both the exact- and the adaptive-gradient attack."
    t = build_ttfp(quick_model, fmnist_test, k=3, n=200)
    with torch.no_grad(): t.prompts.normal_(0, 0.1)
    kw = dict(attacks=[('pgd', {'steps': 3})], eps=['1/255', '4/255'], n=40, progress=False, sanity=False)
    res = evaluate_ttfp(t, fmnist_test, **kw)
    assert t.selection_tau is None and not t.clip_bpda                              # restored
    ex, ad = res['reports']['exact'], res['reports']['adaptive']
    t.selection_tau, t.clip_bpda = 0.05, True                                         # the adaptive report is what the
    direct = robust_accuracy(t, fmnist_test, **kw)                                    # harness gives for that gradient
    t.selection_tau, t.clip_bpda = None, False
    assert direct.robust == ad.robust
    for row in res['robust']:
        a, b = (torch.tensor(r.robust[row['eps']], dtype=torch.bool) for r in (ex, ad))
        assert row['ttfp'] == (a & b).float().mean().item()                          # per image, both must fail
        assert (row['ttfp_exact'], row['ttfp_adaptive']) == (a.float().mean().item(), b.float().mean().item())
    # Whether the two attacks leave different images robust depends on the trained classifier (it did in some runs and not
    # in others); the per-image AND above is exact either way, and an OR or a single report fails it whenever they differ.

class FlatNearPrompt0(nn.Module):
    "Class 0 while the image's component along U_(3,5) is below 0.1, wrong (steeply) above it: flat where prompt 0 puts it."
    def __init__(self):
        super().__init__(); self.register_buffer('u', fourier_basis(32, 32, 3, 5)); self.slope = nn.Parameter(torch.tensor(10.))
    def forward(self, z):
        s = ((z - 0.5)[:, 0] * self.u).sum((-2, -1))
        return torch.stack([torch.zeros_like(s), self.slope * torch.relu(s - 0.1) - 1], 1)

def flat_toy(c=0.3):
    "TTFP that always selects prompt 0 (−c·U); prompt 1 (+c·U) would put the image on the classifier's slope."
    t = TTFP(FlatNearPrompt0(), torch.eye(2), features=lambda z: torch.tensor([[1., 0.]]).expand(len(z), 2)).eval()
    with torch.no_grad(): t.prompts.copy_(torch.stack([-c * t.classifier.u, c * t.classifier.u])[:, None])
    return t

@pytest.mark.parametrize('attack', [('pgd', {'steps': 10}), ('apgd-ce', {'steps': 20})])
def test_per_prompt_attack_is_at_least_as_strong_as_soft_selection(attack):
    "Attacking each prompt separately finds what the exact and the soft-selection gradients (both zero here) cannot."
    t = flat_toy()
    grey = (torch.full((8, 1, 32, 32), 0.5), torch.zeros(8, dtype=torch.long))
    res = evaluate_ttfp(t, grey, attacks=[attack], eps='8/255', n=8, progress=False, sanity=False, per_prompt=True)
    r = res['robust'][0]
    assert res['clean']['ttfp'] == 1.
    assert r['ttfp_per_prompt'] <= r['ttfp_adaptive']                           # at least as strong ...
    assert (r['ttfp_exact'], r['ttfp_adaptive'], r['ttfp_per_prompt'], r['ttfp']) == (1., 1., 0., 0.)   # ... and here strictly
    assert (t.selection_tau, t.clip_bpda, t.attack_prompt) == (None, False, None)   # restored
    assert 'TTFP per prompt' in ttfp_markdown(res)
    assert res['reports']['per_prompt'].attacks[0].startswith('ttfp-adaptive(mode=prompts')

def test_ttfp_adaptive_attack_modes():
    "The registered attack: prompt 0 alone cannot fool the toy, prompt 1 does, and the result is judged on TTFP itself."
    from mimbench.attacks import run_attack
    t, x, y = flat_toy(), torch.full((4, 1, 32, 32), 0.5), torch.zeros(4, dtype=torch.long)
    for mode, fooled in (('soft', False), ('prompts', True)):
        xa = run_attack('ttfp-adaptive', t, x, y, 8 / 255, mode=mode, attack='pgd', steps=10)
        assert (xa - x).abs().max() <= 8 / 255 and torch.equal(x, torch.full((4, 1, 32, 32), 0.5))
        with torch.no_grad(): assert bool((t(xa).argmax(1) != y).all()) == fooled, mode
    with t.gradients(clip_bpda=True, attack_prompt=0):                          # prompt 0's path alone: nothing to find
        xa0 = run_attack('pgd', t, x, y, 8 / 255, steps=10)
    with torch.no_grad(): assert (t(xa0).argmax(1) == y).all()

def test_attack_prompt_keeps_values(quick_model, fmnist_test):
    "With `attack_prompt=k` the forward value is TTFP's own; only the backward path takes prompt k."
    from mimbench.data import load_batch
    x, _ = load_batch(fmnist_test, torch.arange(6))
    t = TTFP(quick_model, torch.randn(3, quick_model.embed_dim), prompt_rms=8 / 255).eval()
    with torch.no_grad(): t.prompts.normal_(0, 1)
    with torch.no_grad(): ref = t(x)
    for k in range(3):
        t.attack_prompt = k
        with torch.no_grad(): torch.testing.assert_close(t(x), ref, atol=1e-5, rtol=1e-5)
    t.attack_prompt = None

def test_cli_ttfp(tmp_path, quick_model):
    ckpt = save_model(tmp_path / 'clf.safetensors', quick_model)
    cmd = [str(BIN / 'mimbench'), 'ttfp', str(ckpt), '--k', '3', '--n-train', '200', '--batch-size', '100', '--steps', '1',
           '--attacks', 'fgsm', '--eps', '2/255', '--n', '32', '--out', str(tmp_path / 'out'), '--no-progress']
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '| clean |' in r.stdout and 'ε = 2/255' in r.stdout
    d = next((tmp_path / 'out').glob('finetune-ttfp-fashion-mnist-*'))       # a trainer run
    assert f'trained prompts in {d}' in r.stdout
    res = json.loads((d / 'ttfp.json').read_text())
    assert isinstance(load_model(d)[0], TTFP)                                  # its checkpoint: an ordinary model file
    assert res['settings']['recipe_args']['k'] == 3 and res['history'] == read_metrics(d) and len(res['robust']) == 1
    assert (d / 'result.json').exists() and json.loads((d / 'config.json').read_text())['recipe'] == 'ttfp'
    r2 = subprocess.run(cmd, capture_output=True, text=True)            # cached: prompts are loaded, not retrained
    assert r2.returncode == 0 and f'loaded trained prompts from {d}' in r2.stdout
    bad = subprocess.run([str(BIN / 'mimbench'), 'ttfp', str(tmp_path / 'missing')], capture_output=True, text=True)
    assert bad.returncode != 0 and 'missing' in bad.stderr

def test_old_names_in_frequency_still_resolve():
    "TTFP moved from mimbench.frequency to mimbench.ttfp; the old import path works, with a FutureWarning."
    import mimbench.frequency as fq, mimbench.ttfp as tt
    with pytest.warns(FutureWarning, match='moved to mimbench.ttfp'): assert fq.build_ttfp is tt.build_ttfp
    with pytest.raises(AttributeError): fq.no_such_name
