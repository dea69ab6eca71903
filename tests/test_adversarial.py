"Adversarial pretraining recipes, PGD-AT and the adaptive attacks: hand-computed losses, attack properties, training steps, exact resume, CLI."
import math, os, subprocess, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from safetensors.torch import load_file
import mimbench.train as T
from mimbench.mim import PRETEXTS, MAEPretext
from mimbench.models import create_mae, create_vit, save_model, load_model
from mimbench.mi import hsic_normalized
from mimbench.pretexts import (attack_surface, mae_per_sample, mask_from_noise, rotate, byol_views, cosine_loss,
                               load_pretrained, BYOLNet)
from mimbench.adversarial import Adversarial, pgd_mi, pgd_fea, attack_mode
from mimbench.attacks import pgd, ATTACKS
from mimbench.train import TrainConfig, train, read_metrics, FINETUNE_OBJECTIVES

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
RECIPES = ('mimir', 'adv-mae', 'adv-bert', 'adv-rotnet', 'adv-byol')

def _x(n=6, seed=0):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed))

def _model(recipe, seed=0, **kw):
    torch.manual_seed(seed)
    pt = PRETEXTS[recipe](**kw)
    return pt, pt.create_model('micro', 32, 4, 1)

# -- a reference PGD written independently of mimbench.attacks.perturb (same RNG consumption) --
def ref_pgd(loss_fn, x, eps, norm, steps, alpha, random_start, mask=None):
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
    def proj(xa):
        d = (xa - x) * m
        if norm == 'linf': d = d.clamp(-eps, eps)
        else: d = d * (eps / (d.flatten(1).norm(dim=1) + 1e-12)).clamp(max=1).view(-1, 1, 1, 1)
        return torch.where(m, (x + d).clamp(0, 1), x)
    if random_start:
        if norm == 'linf': xa = proj(x + eps * (torch.rand(x.shape) * 2 - 1))
        else:
            t = torch.randn(x.shape); t = t / (t.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
            xa = proj(x + eps * torch.rand(x.shape[0]).view(-1, 1, 1, 1) * t)
    else: xa = x
    for _ in range(steps):
        z = xa.detach().requires_grad_(True)
        g, = torch.autograd.grad(loss_fn(z).sum(), z)
        g = g * m
        step = g.sign() if norm == 'linf' else g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
        xa = proj(xa + alpha * step)
    return xa.detach()

def _pixels(mae, patch_mask):
    return mae.unpatchify(patch_mask.unsqueeze(-1).expand(-1, -1, mae.patch_size ** 2 * mae.in_chans)).bool()

def _mae_reference(mae, x, seed, eps, norm, steps, alpha, random_start, region='visible', mi_weight=0., clean_weight=0.):
    torch.manual_seed(seed)
    noise = torch.rand(len(x), 64)
    mask = mask_from_noise(noise, 0.75)
    pm = _pixels(mae, 1 - mask) if region == 'visible' else None
    def per(z):
        _, pred, mk = mae(z, 0.75, noise=noise, target=x)
        return mae_per_sample(mae, pred, mk, x)
    xa = ref_pgd(per, x, eps, norm, steps, alpha, random_start, pm)
    lat, mk, ids = mae.forward_encoder(xa, 0.75, noise)
    loss = mae_per_sample(mae, mae.forward_decoder(lat, ids), mk, x).mean()
    if mi_weight: loss = loss + mi_weight * hsic_normalized(lat.flatten(1), xa.flatten(1))
    if clean_weight: loss = loss + clean_weight * per(x).mean()
    return loss, xa

@pytest.mark.parametrize('recipe,kw,ref', [
    ('mimir', {}, dict(eps=8 / 255, norm='linf', steps=1, alpha=10 / 255, random_start=True, mi_weight=1e-5)),
    ('mimir', {'region': 'whole'}, dict(eps=8 / 255, norm='linf', steps=1, alpha=10 / 255, random_start=True, mi_weight=1e-5, region='whole')),
    ('adv-mae', {}, dict(eps=0.5, norm='l2', steps=2, alpha=0.5 * 5 / 8, random_start=True)),
    ('adv-mae', {'norm': 'linf', 'eps': '1/255'}, dict(eps=1 / 255, norm='linf', steps=2, alpha=5 / 8 / 255, random_start=True)),
    ('adv-bert', {}, dict(eps=8 / 255, norm='linf', steps=4, alpha=2 / 255, random_start=False, clean_weight=1.)),
])
def test_mae_recipe_losses_match_hand_computation(recipe, kw, ref):
    pt, mae = _model(recipe, **kw)
    x = _x()
    torch.manual_seed(5); out = pt.loss(mae, x)
    want, _ = _mae_reference(mae, x, 5, **ref)
    assert out['loss'].item() == pytest.approx(want.item(), rel=1e-5)

def test_adv_rotnet_loss_matches_hand_computation():
    pt, net = _model('adv-rotnet')
    x = _x()
    torch.manual_seed(5); out = pt.loss(net, x)
    torch.manual_seed(5)
    k = torch.randint(0, 4, (len(x),))
    xr = torch.stack([torch.rot90(xi, int(ki), (1, 2)) for xi, ki in zip(x, k)])
    xa = ref_pgd(lambda z: F.cross_entropy(net(z), k, reduction='none'), xr, 4 / 255, 'linf', 2, 4 / 255 * 5 / 8, True)
    assert out['loss'].item() == pytest.approx(F.cross_entropy(net(xa), k).item(), rel=1e-5)

def test_adv_byol_loss_matches_hand_computation():
    pt, net = _model('adv-byol')
    x = _x(8)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5); out = pt.loss(net, x)
    net.load_state_dict(state)
    torch.manual_seed(5)
    net.update_target(pt.base.tau)
    v1, v2 = byol_views(x)
    on, tg = torch.cat([v1, v2]), torch.cat([v2, v1])
    def per(z):
        q = net.predictor(net.projector(net.encoder(z)))
        with torch.no_grad(): zt = net.target_projector(net.target_encoder(tg))
        return 2 - 2 * F.cosine_similarity(q, zt, dim=-1)
    with attack_mode(net):
        xa = ref_pgd(per, on, 2 / 255, 'linf', 2, 2 / 255 * 5 / 8, True)
    assert out['loss'].item() == pytest.approx(2 * per(xa).mean().item(), rel=1e-5)

@pytest.mark.parametrize('recipe', RECIPES)
def test_pretraining_attack_increases_pretext_loss(recipe):
    pt, model = _model(recipe, steps=3)
    x = _x(8)
    torch.manual_seed(1)
    if recipe == 'adv-byol': model.train()
    s = attack_surface(pt.base, model, x)
    clean = s.loss(model, s.x)[0].mean()
    xa = pt.attack(model, s)
    assert s.loss(model, xa)[0].mean() > clean

@pytest.mark.parametrize('recipe,norm', [('mimir', 'linf'), ('adv-mae', 'l2'), ('adv-bert', 'linf')])
def test_visible_attack_leaves_masked_patches_untouched(recipe, norm):
    pt, mae = _model(recipe)
    x = _x()
    torch.manual_seed(2); s = attack_surface(pt.base, mae, x)
    xa = pt.attack(mae, s)
    masked = _pixels(mae, 1 - s.visible)
    assert (xa - x)[masked].abs().max() == 0
    assert (xa - x)[~masked].abs().max() > 0
    assert xa.min() >= 0 and xa.max() <= 1

def test_whole_image_variant_perturbs_masked_patches_too():
    pt, mae = _model('mimir', region='whole')
    x = _x()
    torch.manual_seed(2); s = attack_surface(pt.base, mae, x)
    xa = pt.attack(mae, s)
    assert (xa - x)[_pixels(mae, 1 - s.visible)].abs().max() > 0

def test_fgsm_is_adv_mae_with_one_step():
    "AdPE's FGSM baseline: x + ε·sign(∇) on the visible patches."
    pt, mae = _model('adv-mae', steps=1, random_start=False, norm='linf', eps='4/255')
    x = _x()
    torch.manual_seed(3); s = attack_surface(pt.base, mae, x)
    xa = pt.attack(mae, s)
    z = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(s.loss(mae, z)[0].sum(), z)
    vis = _pixels(mae, s.visible)
    want = torch.where(vis, (x + 4 / 255 * g.sign()).clamp(0, 1), x)
    torch.testing.assert_close(xa, want, atol=1e-6, rtol=0)

@pytest.mark.parametrize('recipe', RECIPES + ('rotnet', 'byol', 'perceptual-mae'))
def test_one_training_step_changes_the_weights(recipe, tmp_path):
    kw = {}
    if recipe == 'perceptual-mae':
        torch.manual_seed(9); save_model(tmp_path / 't.safetensors', create_vit('micro', 32, 8, 1, num_classes=10))
        kw = {'teacher': str(tmp_path / 't.safetensors')}
    pt, model = _model(recipe, **kw)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(0)
    out = pt.loss(model, _x(8))
    assert torch.isfinite(out['loss'])
    opt.zero_grad(); out['loss'].backward(); opt.step()
    changed = [k for k, v in model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any('blocks.0.attn.qkv.weight' in k for k in changed), changed

def _crash_after(monkeypatch, at_step):
    orig = T.save_checkpoint
    def crashing(path, model, optimizer, step, cfg, pending=()):
        orig(path, model, optimizer, step, cfg, pending)
        if step == at_step: raise KeyboardInterrupt('simulated crash')
    monkeypatch.setattr(T, 'save_checkpoint', crashing)

@pytest.mark.parametrize('recipe,args', [('mimir', {}), ('adv-byol', {'hidden': 64, 'dim_out': 32})])
def test_resume_is_exact_for_adversarial_runs(recipe, args, tmp_path, monkeypatch):
    "A run that dies mid-epoch right after a checkpoint and is restarted ends bit-identical to an uninterrupted one."
    kw = dict(task='pretrain', recipe=recipe, recipe_args=args, n_train=128, batch_size=64, epochs=2, ckpt_every=1,
              lr=1e-3, augment='mae', progress=False, log_every=1)
    ref = train(TrainConfig(**kw, out=str(tmp_path / 'ref')))
    _crash_after(monkeypatch, 3)
    cfg = TrainConfig(**kw, out=str(tmp_path / 'cut'))
    with pytest.raises(KeyboardInterrupt): train(cfg)
    monkeypatch.undo()
    again = train(cfg)
    a, b = load_file(str(ref.dir / 'model.safetensors')), load_file(str(again.dir / 'model.safetensors'))
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    strip = lambda rs: [{k: v for k, v in r.items() if k != 'time'} for r in rs]
    assert strip(read_metrics(ref.dir)) == strip(read_metrics(again.dir))

def test_pgd_at_objective_trains_on_attacked_inputs(quick_model, fmnist_test):
    from mimbench.data import load_batch
    x, y = load_batch(fmnist_test, torch.arange(64))
    obj = FINETUNE_OBJECTIVES['pgd-at'](steps=5)
    model = quick_model.train()
    out = obj.loss(model, x, y)
    model.eval()
    with torch.no_grad(): clean = (model(x).argmax(1) == y).float().mean()
    assert out['adv_acc'] < clean - 0.2
    assert model.training is False and all(p.requires_grad for n, p in model.named_parameters() if 'pos_embed' not in n)

def test_pgd_mi_without_mi_is_pgd_and_adaptive_attacks_hurt(quick_model, fmnist_test):
    from mimbench.data import load_batch
    x, y = load_batch(fmnist_test, torch.arange(48))
    a = pgd_mi(quick_model, x, y, '4/255', steps=5, alpha=1 / 255, lam=0.)
    b = pgd(quick_model, x, y, '4/255', steps=5, alpha=1 / 255)
    torch.testing.assert_close(a, b)
    c = pgd_mi(quick_model, x, y, '4/255', steps=5, alpha=1 / 255, lam=1.)        # a large λ changes the attack
    assert not torch.equal(a, c)
    with torch.no_grad():
        f0 = quick_model.forward_features(x).flatten(1)
        xf = pgd_fea(quick_model, x, y, '4/255', steps=5)
        rnd = (x + (torch.rand_like(x) * 2 - 1) * 4 / 255).clamp(0, 1)
        d_fea = (quick_model.forward_features(xf).flatten(1) - f0).norm(dim=1).mean()
        d_rnd = (quick_model.forward_features(rnd).flatten(1) - f0).norm(dim=1).mean()
        clean = (quick_model(x).argmax(1) == y).float().mean()
        mi_acc = (quick_model(a).argmax(1) == y).float().mean()
    assert d_fea > 2 * d_rnd and mi_acc < clean
    assert {'pgd-mi', 'pgd-fea'} <= set(ATTACKS)

def test_errors_are_clear():
    with pytest.raises(ValueError, match="'visible' or 'whole'"): PRETEXTS['mimir'](region='all')
    with pytest.raises(ValueError, match="'natural' or 'adversarial'"): PRETEXTS['adv-mae'](target='clean')
    with pytest.raises(ValueError, match='needs a frozen ViT'): PRETEXTS['perceptual-mae']()
    with pytest.raises(KeyError, match='Did you mean'): PRETEXTS['mimr']
    pt, net = _model('adv-rotnet', region='visible')
    with pytest.raises(ValueError, match='needs a masked pretext'): pt.loss(net, _x())
    with pytest.raises(ValueError, match='larger than the'): PRETEXTS['mimir'](eps=8)

def _cli(*args):
    return subprocess.run([str(BIN / 'mimbench'), *map(str, args)], env=ENV, capture_output=True, text=True, check=True).stdout

def _cli_inproc(capsys, *args):
    "The same command line through `mimbench.cli.main`, without a new interpreter (faster)."
    from mimbench.cli import main
    capsys.readouterr(); main([str(a) for a in args])
    return capsys.readouterr().out

def test_cli_mimir_pretrain_pgd_at_finetune_and_adaptive_eval(tmp_path, capsys):
    common = ('--n-train', 128, '--batch-size', 64, '--no-progress', '--out', tmp_path)
    _cli('pretrain', '--recipe', 'mimir', '--mask-ratio', 0.7, '--args', '{"mi": "renyi", "mi_sigma": 2}', *common)
    (pre,) = tmp_path.glob('pretrain-mimir-*')
    assert load_pretrained(pre).config['kind'] == 'mae'
    _cli_inproc(capsys, 'finetune', '--recipe', 'pgd-at', '--init', pre, '--args', '{"steps": 2}', '--n-eval', 64, *common)
    (ft,) = tmp_path.glob('finetune-pgd-at-*')
    out = _cli_inproc(capsys, 'eval', ft, '--attacks', 'pgd-mi,pgd-fea', '--n', 32, '--no-progress')
    assert '| pgd-mi |' in out and '| pgd-fea |' in out
    _cli_inproc(capsys, 'pretrain', '--recipe', 'adv-rotnet', *common)
    (rot,) = tmp_path.glob('pretrain-adv-rotnet-*')
    _cli_inproc(capsys, 'export-encoder', rot, '--out', tmp_path / 'enc.safetensors')
    assert load_model(tmp_path / 'enc.safetensors')[0].head.out_features == 10
