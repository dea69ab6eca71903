"Adversarial pretraining recipes, PGD-AT and the adaptive attacks: hand-computed losses, attack properties, training steps, exact resume, CLI."
import math, os, socket, subprocess, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from safetensors.torch import load_file
import mimbench.train as T
from mimbench.mim import PRETEXTS, MAEPretext
from mimbench.models import create_mae, create_vit, save_model, load_model
from mimbench.mi import hsic_normalized
from mimbench.pretexts import attack_surface, mae_per_sample, mask_from_noise, rotate, byol_views, cosine_loss, BYOLNet
from mimbench.adversarial import Adversarial, pgd_mi, pgd_fea, gradient_ascent
from mimbench.core import model_state
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
    ('adv-bert', {'variant': 'sign-pgd'}, dict(eps=8 / 255, norm='linf', steps=4, alpha=2 / 255, random_start=False, clean_weight=1.)),
])
def test_mae_recipe_losses_match_hand_computation(recipe, kw, ref):
    pt, mae = _model(recipe, **kw)
    x = _x()
    torch.manual_seed(5); out = pt.loss(mae, x)
    want, _ = _mae_reference(mae, x, 5, **ref)
    assert out['loss'].item() == pytest.approx(want.item(), rel=1e-5)

def _alg1_reference(mae, x, noise, alpha=1., steps=4):
    "Huang et al. eq. 3 by hand: x^t = x^{t-1} + α·∇[m·L_pix(x, x̂^{t-1})] on the unmasked pixels, kept in [0,1]."
    vis = _pixels(mae, 1 - mask_from_noise(noise, 0.75)).float()
    def per(z):
        _, pred, mk = mae(z, 0.75, noise=noise, target=x)
        return mae_per_sample(mae, pred, mk, x)
    xa = x.clone()
    for _ in range(steps):
        z = xa.clone().requires_grad_(True)
        g, = torch.autograd.grad(per(z).sum(), z)
        xa = (xa + alpha * g * vis).clamp(0, 1)
    return xa, per

def test_adv_bert_default_is_huang_algorithm_1():
    "Default adv-bert: clean and adversarial batches alternate by step parity; the adversarial input is x + 4 raw-gradient steps."
    pt, mae = _model('adv-bert')
    x = _x()
    flags = []
    for call in range(4):
        torch.manual_seed(20 + call); out = pt.loss(mae, x)
        torch.manual_seed(20 + call); noise = torch.rand(len(x), 64)
        xa, per = _alg1_reference(mae, x, noise)
        flags.append(out['adversarial'].item())
        want = per(xa if call % 2 else x).mean()
        assert out['loss'].item() == pytest.approx(want.item(), rel=1e-5), call
        assert out['clean_loss'].item() == pytest.approx(per(x).mean().item(), rel=1e-5)
    assert flags == [0., 1., 0., 1.] and pt.step == 4
    torch.manual_seed(21); s = attack_surface(pt.base, mae, x)
    xa_ref, _ = _alg1_reference(mae, x, s.info['noise'])
    torch.testing.assert_close(pt.attack(mae, s), xa_ref, atol=1e-6, rtol=0)
    d = xa_ref - x                                          # a raw-gradient step, not a sign step: many magnitudes
    assert d.abs().unique().numel() > 100

def test_adv_bert_options():
    pt, mae = _model('adv-bert', alternate=False, alpha=3., eps='1/255')
    x = _x()
    torch.manual_seed(1); out = pt.loss(mae, x)
    assert out['adversarial'].item() == 1.                 # every batch adversarial
    torch.manual_seed(1); s = attack_surface(pt.base, mae, x)
    d = pt.attack(mae, s) - x
    assert d.abs().max() <= 1 / 255 + 1e-7 and d.abs().max() > 0.9 / 255    # the optional ℓ∞ budget binds at α = 3
    mae.eval(); pt.loss(mae, x); assert pt.step == 1      # evaluation calls do not advance the parity
    assert PRETEXTS['adv-bert'](variant='sign-pgd').clean_weight == 1.
    with pytest.raises(ValueError, match='sign-pgd'): PRETEXTS['adv-bert'](norm='l2')
    with pytest.raises(ValueError, match='alpha must be > 0'): PRETEXTS['adv-bert'](alpha=0)
    xg = torch.full((1, 1, 2, 2), .5)
    xa, first = gradient_ascent(lambda z: (z * torch.tensor([1., -2., 3., 0.]).view(1, 1, 2, 2)).sum((1, 2, 3)), xg, 0.1, 2)
    torch.testing.assert_close(xa, torch.tensor([.7, .1, 1., .5]).view(1, 1, 2, 2))   # +0.1·∇ twice, clamped to [0,1]
    assert first.item() == pytest.approx(1.)

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
    with model_state(net, frozen=True):
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
    assert load_model(pre)[0].config['kind'] == 'mae'
    _cli_inproc(capsys, 'finetune', '--recipe', 'pgd-at', '--init', pre, '--args', '{"steps": 2}', '--n-eval', 64, *common)
    (ft,) = tmp_path.glob('finetune-pgd-at-*')
    out = _cli_inproc(capsys, 'eval', ft, '--attacks', 'pgd-mi,pgd-fea', '--n', 32, '--no-progress')
    assert '| pgd-mi |' in out and '| pgd-fea |' in out
    _cli_inproc(capsys, 'pretrain', '--recipe', 'adv-rotnet', *common)
    (rot,) = tmp_path.glob('pretrain-adv-rotnet-*')
    _cli_inproc(capsys, 'export-encoder', rot, '--out', tmp_path / 'enc.safetensors')
    assert load_model(tmp_path / 'enc.safetensors')[0].head.out_features == 10

class _Counting(torch.nn.Module):
    "A stand-in for the DDP wrapper (`unwrap` finds `.module`) that counts the forwards going through it."
    def __init__(self, module): super().__init__(); self.module, self.calls = module, 0
    def forward(self, *a, **k): self.calls += 1; return self.module(*a, **k)

@pytest.mark.parametrize('recipe,args', [('mimir', {}), ('adv-bert', {}), ('adv-bert', {'variant': 'sign-pgd'})])
def test_one_forward_of_the_wrapped_model_per_step(recipe, args):
    "Under DDP each extra forward of the wrapper re-broadcasts buffers and re-arms the reducer: one per training step."
    pt, model = _model(recipe, **args)
    net = _Counting(model)
    for step in range(2):                                  # adv-bert: a clean and an adversarial step
        torch.manual_seed(step); net.calls = 0
        pt.loss(net, _x())
        assert net.calls == 1, (recipe, args, step, net.calls)

# --- DDP: two gloo processes must hold identical adversaries and weights ---

DDP_RUNS = {'adpe-ape-emb': ('adpe-ape-emb', {}), 'adpe-rpe-coord': ('adpe-rpe-coord', {}), 'mimir': ('mimir', {}),
            'adv-bert': ('adv-bert', {}), 'adv-bert-sign-pgd': ('adv-bert', {'variant': 'sign-pgd'})}

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _ddp_worker(rank, world, port, out):
    "One DDP rank: train each of DDP_RUNS for 3 steps through the trainer, save this rank's final state."
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      CUDA_VISIBLE_DEVICES='')           # CPU ranks even on a GPU machine (the trainer puts DDP ranks on cuda:rank)
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group('gloo', rank=rank, world_size=world)
    import mimbench.adpe                                   # registers the adpe-* recipes
    from mimbench.adpe import Adversary
    built, build = {}, T.build_run
    def capture(cfg):
        built['model'], obj = build(cfg); return built['model'], obj
    T.build_run = capture
    for key, (recipe, args) in DDP_RUNS.items():
        cfg = TrainConfig(task='pretrain', recipe=recipe, recipe_args=args, n_train=24, batch_size=8, epochs=1, lr=1e-3,
                          augment='none', out=os.path.join(out, 'runs'), progress=False, device='cpu')
        T.train(cfg)
        torch.save({k: v.detach().clone() for k, v in built['model'].state_dict().items()}, os.path.join(out, f'{key}.{rank}.pt'))
    adv = Adversary((3,), eps=100., norm='l2', lr=1.)        # a known answer: δ = lr × the mean of the ranks' gradients
    (adv() * torch.tensor([1., 2., 3.]) * (rank + 1)).sum().backward()
    torch.save(adv.delta.clone(), os.path.join(out, f'known.{rank}.pt'))
    dist.destroy_process_group()

@pytest.fixture(scope='module')
def ddp_states(tmp_path_factory):
    import torch.multiprocessing as mp
    out = tmp_path_factory.mktemp('ddp')
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out

@pytest.mark.parametrize('key', DDP_RUNS)
def test_ddp_ranks_hold_identical_adversaries_and_weights(ddp_states, key):
    "After 3 DDP steps (2 gloo ranks) both ranks hold the same weights and the same adversary (AdPE's δ), bit for bit."
    a, b = (torch.load(ddp_states / f'{key}.{r}.pt') for r in (0, 1))
    assert a.keys() == b.keys()
    diff = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point()}
    bad = {k: d for k, d in diff.items() if d > 0}
    assert not bad, f"{key}: ranks differ in {len(bad)} tensors, e.g. {dict(list(bad.items())[:4])}"
    deltas = [k for k in a if k.endswith('delta')]
    if key.startswith('adpe'):
        assert deltas and max(a[k].abs().max().item() for k in deltas) > 0, 'the adversary never moved: the test would prove nothing'

def test_ddp_adversary_steps_on_the_mean_gradient(ddp_states):
    "Rank r's local gradient is (r+1)·(1, 2, 3); the step uses their mean, 1.5·(1, 2, 3), on both ranks."
    for r in (0, 1): torch.testing.assert_close(torch.load(ddp_states / f'known.{r}.pt'), torch.tensor([1.5, 3., 4.5]))
