"NIM pretext, De³ and de-masking defences, the σ sweep, and the evaluation protocol for randomized defences."
import json, subprocess, sys
from pathlib import Path
import pytest, torch
from mimbench.data import get_dataset
from mimbench.defenses import De3, MAEDemasking, reconstruct, sigma_sweep, build_defense
from mimbench.evaluate import robust_accuracy
from mimbench.mim import PRETEXTS, SigmaDistribution
from mimbench.models import create_mae, create_vit
from mimbench.train import TrainConfig, train

BIN = Path(sys.executable).parent

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A NIM denoiser and a De³ classifier fine-tuned on its reconstructions, micro scale, a few hundred steps."
    out = str(tmp_path_factory.mktemp('runs'))
    nim = train(TrainConfig(task='pretrain', recipe='nim', recipe_args={'sigma': 'gamma:25,3'}, n_train=4096, epochs=1,
                            batch_size=64, lr=1.5e-3, out=out, progress=False))
    clf = train(TrainConfig(task='finetune', recipe='de3', recipe_args={'denoiser': str(nim.dir)}, init=str(nim.dir),
                            n_train=8192, epochs=1, batch_size=64, lr=2e-3, n_eval=500, out=out, progress=False))
    return nim, clf

def test_sigma_distributions_match_their_definition():
    torch.manual_seed(0)
    g = SigmaDistribution('gamma:3,25').sample(50_000)
    assert abs(g.mean() - 75) < 1.5 and abs(g.var() - 3 * 25 ** 2) / (3 * 25 ** 2) < 0.05 and g.min() > 0
    u = SigmaDistribution('uniform:0,250').sample(50_000)
    assert 0 <= u.min() and u.max() <= 250 and abs(u.mean() - 125) < 2
    assert SigmaDistribution('gamma:25,3').mean == 75

def test_nim_step_changes_weights_and_loss_is_pixel_mse():
    pre = PRETEXTS['nim'](sigma='fixed:0')
    m = pre.create_model('micro', in_chans=1)
    x = torch.rand(4, 1, 32, 32)
    loss = pre.loss(m, x)['loss']
    _, pred, _ = m(x, mask_ratio=0.)
    torch.testing.assert_close(loss, ((pred - m.patchify(x)) ** 2).mean(), rtol=1e-4, atol=1e-6)  # σ 0: plain MSE, all patches
    before = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.AdamW(m.parameters(), 1e-3); loss.backward(); opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))

def test_de3_changes_with_sigma_and_is_randomized(trained):
    nim, clf = trained
    d = build_defense('de3', str(nim.dir), str(clf.dir), sigma=0)
    x, _ = get_dataset('fashion-mnist', 'test', channels=1).get_batch(torch.arange(16))
    with torch.no_grad():
        r0 = d.denoise(x); d.sigma = 150; r150 = d.denoise(x)
    assert not torch.allclose(r0, r150)
    assert d.is_randomized
    with pytest.raises(ValueError, match='σ must be'): d.sigma = -150   # would read as deterministic: no EOT, no passes
    assert d.sigma == 150

def test_harness_uses_eot_and_passes_for_de3(trained):
    nim, clf = trained
    d = build_defense('de3', str(nim.dir), str(clf.dir), sigma=70)
    calls = {'n': 0}
    d.classifier.register_forward_hook(lambda *a: calls.__setitem__('n', calls['n'] + 1))
    ds = get_dataset('fashion-mnist', 'test', channels=1)
    rep = robust_accuracy(d, ds, attacks=[('pgd', {'steps': 1})], eps='4/255', n=8, sanity=False, progress=False)
    assert rep.settings['randomized'] and rep.settings['passes'] == 5
    # 5 clean passes + PGD-1 with EOT 20 (random start + 1 step = 20 forwards with grads) + 5 adversarial passes
    assert calls['n'] >= 5 + 20 + 5, calls

def test_single_pass_protocol_is_not_stronger_than_full(trained):
    "The paper code's protocol (1 pass, APGD-10, no EOT) never reports lower robust accuracy than ours."
    nim, clf = trained
    d = build_defense('de3', str(nim.dir), str(clf.dir), sigma=70)
    ds = get_dataset('fashion-mnist', 'test', channels=1)
    weak = robust_accuracy(d, ds, attacks=[('apgd-ce', {'steps': 10, 'eot': 1})], eps='4/255', n=48, passes=1, sanity=False, progress=False, seed=1)
    full = robust_accuracy(d, ds, attacks=[('apgd-ce', {'steps': 20})], eps='4/255', n=48, sanity=False, progress=False, seed=1)
    assert full.settings['passes'] == 5 and weak.settings['passes'] == 1
    assert full.worst_case[full.eps_label(full.eps[0])] <= weak.worst_case[weak.eps_label(weak.eps[0])] + 1e-9

def test_sweep_cache_returns_identical_results(tmp_path, trained):
    nim, clf = trained
    d = build_defense('de3', str(nim.dir), str(clf.dir))
    ds = get_dataset('fashion-mnist', 'test', channels=1)
    kw = dict(sigmas=[0, 100], attacks=[('fgsm', {})], eps='4/255', n=16, passes=2, cache_dir=tmp_path, progress=False)
    a = sigma_sweep(d, ds, **kw)
    files = list(tmp_path.glob('*.json')); mtime = files[0].stat().st_mtime_ns
    b = sigma_sweep(d, ds, **kw)
    assert a == b and files[0].stat().st_mtime_ns == mtime        # read back, not recomputed
    assert d.sigma == 70.                                        # the sweep restores σ
    c = sigma_sweep(d, ds, **{**kw, 'sigmas': [0, 50]})
    assert c['key'] != a['key']

def test_demasking_requires_pixel_targets():
    clf = create_vit('micro', in_chans=1)
    with pytest.raises(ValueError, match='norm_pix_loss=True'): MAEDemasking(create_mae('micro', in_chans=1), clf)
    with pytest.raises(TypeError, match='MAE/NIM'): De3(clf, clf)

def test_cli_pretrain_nim_and_sweep(tmp_path, trained):
    nim, clf = trained
    r = subprocess.run([str(BIN / 'mimbench'), 'sweep', str(nim.dir), str(clf.dir), '--sigmas', '0,60', '--attacks', 'fgsm',
                        '--n', '16', '--passes', '2', '--out', str(tmp_path), '--no-progress'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert '| 60 |' in r.stdout and list(tmp_path.glob('*.png'))

def test_defences_report_their_input_shape():
    "De³ and MAE de-masking take the classifier's images: loaders ask them for in_chans/img_size (a 1-channel model got 3)."
    from mimbench.models import create_mae, create_vit
    from mimbench.defenses import De3, MAEDemasking
    nim, clf = create_mae('micro', in_chans=1, norm_pix_loss=False), create_vit('micro', in_chans=1)
    for d in (De3(nim, clf), MAEDemasking(nim, clf)): assert (d.in_chans, d.img_size) == (1, 32)
