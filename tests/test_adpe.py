"AdPE: projection, parallel-mode ascent, equality with MAE at zero adversary lr, MAE+ crops, trainer resume, CLI (the RPE index and lookup: test_models.py)."
import math, os, subprocess, sys
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file
from mimbench.adpe import Adversary, AdPEMAE, create_adpe_mae, project_ball, random_crops, vit_from_adpe, EPS_GRID
from mimbench.mim import PRETEXTS
from mimbench.models import create_mae, load_model
from mimbench.train import TrainConfig, train, run_dir

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
RECIPES = ('adpe-ape-emb', 'adpe-ape-coord', 'adpe-rpe-emb', 'adpe-rpe-coord')

def _weights(d): return load_file(str(Path(d) / 'model.safetensors'))

def _randomise_rpe(m, std=.2):
    "iRPE tables start at 0, where the coordinate adversary has no gradient yet; give them values."
    for b in [*m.encoder.blocks, *m.decoder_blocks]:
        if hasattr(b.attn, 'rpe_table'): torch.nn.init.normal_(b.attn.rpe_table, std=std)

# --- projection ---

@settings(max_examples=30, deadline=None)
@given(norm=st.sampled_from(['linf', 'l2']), eps=st.floats(0.01, 30.), scale=st.floats(0.01, 1e3), seed=st.integers(0, 10**6))
def test_project_ball_is_a_projection(norm, eps, scale, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(7, generator=g) * scale
    p = project_ball(v, eps, norm)
    n = p.abs().max() if norm == 'linf' else p.norm()
    assert n <= eps * (1 + 1e-5)
    torch.testing.assert_close(project_ball(p, eps, norm), p)            # idempotent
    if (v.abs().max() if norm == 'linf' else v.norm()) <= eps: torch.testing.assert_close(p, v)   # inside: unchanged

@pytest.mark.parametrize('update', ['sgd', 'sign', 'adamw'])
@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_adversary_stays_in_ball_after_every_step(update, norm):
    torch.manual_seed(0)
    adv = Adversary((5,), eps=0.7, norm=norm, lr=3., update=update, weight_decay=0.5)
    for _ in range(25):
        (adv() * torch.randn(5) * 10).sum().backward()
        n = adv.delta.abs().max() if norm == 'linf' else adv.delta.norm()
        assert n <= 0.7 * (1 + 1e-6)
    assert n > 0.3                                     # and it does move

@pytest.mark.parametrize('recipe', RECIPES)
def test_model_adversaries_in_ball_through_training_steps(recipe):
    torch.manual_seed(0)
    p = PRETEXTS[recipe](norm='l2', eps=0.5, adv_lr=50.)
    m = p.create_model('micro', 32, 4, 1); _randomise_rpe(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.rand(4, 1, 32, 32)
    for _ in range(3):
        opt.zero_grad(); p.loss(m, x)['loss'].backward(); opt.step()
        for a in m.adversaries(): assert a.delta.norm() <= 0.5 * (1 + 1e-5)
    assert m.adversary_norm() > 0.1
    assert all(a.delta.grad is None for a in m.adversaries())            # the optimiser never sees them
    assert not any(n.endswith('delta') for n, _ in m.named_parameters())

# --- parallel mode: zero lr is MAE; ascent increases the loss ---

def test_zero_adversary_lr_equals_mae_through_trainer(tmp_path):
    "APE on the MAE encoder with adversary lr 0 trains bit-identically to mimbench's MAE (same seeds, same trainer)."
    common = dict(n_train=256, batch_size=64, epochs=1, lr=1e-3, out=str(tmp_path), progress=False, augment='mae')
    a = train(TrainConfig(recipe='mae', **common))
    b = train(TrainConfig(recipe='adpe-ape-emb', recipe_args={'adv_lr': 0., 'crops': 0, 'encode_all': False}, **common))
    wa, wb = _weights(a.dir), _weights(b.dir)
    assert set(wb) - set(wa) == {'adv.delta'}
    for k in wa: assert torch.equal(wa[k], wb[k]), k
    assert torch.count_nonzero(wb['adv.delta']) == 0

@pytest.mark.parametrize('pe,mode', [('ape', 'emb'), ('ape', 'coord'), ('rpe', 'emb'), ('rpe', 'coord')])
def test_zero_perturbation_reproduces_unperturbed_model(pe, mode):
    torch.manual_seed(0)
    plain = create_adpe_mae('micro', 32, 4, 1, pe=pe)
    adv = create_adpe_mae('micro', 32, 4, 1, pe=pe, adversary=dict(mode=mode, eps=5., lr=1.))
    _randomise_rpe(plain)
    adv.load_state_dict(plain.state_dict(), strict=False)
    x, noise = torch.rand(3, 1, 32, 32), torch.rand(3, 64)
    l0, p0, _ = plain(x, noise=noise)
    l1, p1, _ = adv(x, noise=noise)                    # training mode: the adversary path runs, with δ = 0
    assert torch.equal(p0.detach(), p1.detach()) and l0.item() == l1.item()

@pytest.mark.parametrize('update', ['adamw', 'sgd'])
@pytest.mark.parametrize('pe,mode', [('ape', 'emb'), ('ape', 'coord'), ('rpe', 'emb'), ('rpe', 'coord')])
def test_ascent_increases_pretext_loss_on_fixed_batch(update, pe, mode):
    "The adversary's update (incl. the official code's negative-lr AdamW group) raises the loss when θ is held fixed."
    torch.manual_seed(0)
    m = create_adpe_mae('micro', 32, 4, 1, pe=pe, adversary=dict(mode=mode, eps=3. if pe == 'ape' else 20., lr=.1 if update == "adamw" else 50.,
                                                                 update=update))
    _randomise_rpe(m)
    m.requires_grad_(False)                            # θ fixed: only the adversary moves
    x, noise = torch.rand(8, 1, 32, 32), torch.rand(8, 64)
    losses = []
    for _ in range(15):
        loss, _, _ = m(x, noise=noise)
        loss.backward(); losses.append(loss.item())
    assert losses[-1] > losses[0] * 1.001, losses

def test_rpe_coordinate_gradient_is_finite_and_nonzero():
    torch.manual_seed(0)
    m = create_adpe_mae('micro', 32, 4, 1, pe='rpe', adversary=dict(mode='coord', eps=20., lr=0.))
    _randomise_rpe(m)
    grads = []
    for a in m.rpe_adv: a.delta.fill_(0.3); a.ascend = lambda g, grads=grads: grads.append(g)
    m(torch.rand(2, 1, 32, 32))[0].backward()
    assert len(grads) == 5 and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)

# --- MAE+ ---

def test_mae_plus_crops_and_token_counts():
    x = torch.rand(3, 1, 32, 32)
    c = random_crops(x, 4)
    assert c.shape == (12, 1, 16, 16)
    for k in range(12):                                # each crop is a window of its own image
        img = x[k // 4, 0].unfold(0, 16, 1).unfold(1, 16, 1)            # 17×17×16×16 windows
        assert (img == c[k, 0]).all(-1).all(-1).any()
    p = PRETEXTS['mae-plus']()
    assert (p.crops, p.encode_all, p.mask_ratio, p.mode) == (4, True, .75, 'none')
    torch.manual_seed(0)
    m = p.create_model('micro', 32, 4, 1)
    seen = {}
    hooks = [m.encoder.blocks[0].register_forward_hook(lambda mod, i, o: seen.__setitem__('enc', o.shape)),
             m.decoder_blocks[0].register_forward_hook(lambda mod, i, o: seen.__setitem__('dec', o.shape))]
    latent, mask, ids = m.forward_encoder(c, .75)
    m.forward_decoder(latent, ids, mask)
    for h in hooks: h.remove()
    assert seen == {'enc': (12, 17, 64), 'dec': (12, 17, 64)}          # cls + all 16 tokens, masked ones included
    assert (mask.sum(1) == 12).all()                   # 75 % of each crop's 16 tokens
    # the plain MAE encoder, by contrast, sees cls + the 4 visible tokens of a crop
    mae = create_adpe_mae('micro', 32, 4, 1, encode_all=False)
    assert mae.forward_encoder(c, .75)[0].shape == (12, 5, 64)

def test_full_size_images_after_crop_training():
    "A model trained on half-size crops still encodes full images (position tables follow the grid)."
    torch.manual_seed(0)
    m = PRETEXTS['adpe-ape-coord']().create_model('micro', 32, 4, 1)
    loss, pred, mask = m(torch.rand(2, 1, 32, 32))
    assert pred.shape == (2, 64, 16)
    vit = vit_from_adpe(m)
    assert vit(torch.rand(2, 1, 32, 32)).shape == (2, 10)

def test_bad_settings_are_explained():
    with pytest.raises(ValueError, match='encode_all=True'): create_adpe_mae(pe='rpe', encode_all=False)
    with pytest.raises(ValueError, match='Unknown adversary mode'): create_adpe_mae(adversary=dict(mode='pixel', eps=1.))
    with pytest.raises(ValueError, match='Unknown norm'): PRETEXTS['adpe-ape-emb'](norm='l1')
    with pytest.raises(ValueError, match='update'): PRETEXTS['adpe-ape-emb'](update='adam')
    with pytest.raises(KeyError, match='adpe-rpe-coord'): PRETEXTS['adpe-rpe-cord']
    with pytest.raises(ValueError, match='divisible'): create_adpe_mae('micro', 32, 4, 1)(torch.rand(1, 1, 18, 18))

def test_paper_eps_grid_and_defaults():
    assert EPS_GRID[('rpe', 'coord', 'linf')] == (10, 15, 20)
    p = PRETEXTS['adpe-rpe-coord']()
    assert (p.pe, p.mode, p.norm, p.eps, p.crops) == ('rpe', 'coord', 'linf', 20., 4)
    assert PRETEXTS['adpe-ape-emb']().eps == 3.

# --- trainer: checkpoints, resume, CLI ---

@pytest.mark.parametrize('recipe', ['adpe-rpe-coord', 'adpe-ape-emb'])
def test_resume_restores_adversary_exactly(tmp_path, recipe, monkeypatch):
    "A run that dies mid-epoch and is restarted ends with the same weights and adversaries as an uninterrupted one."
    cfg = TrainConfig(recipe=recipe, recipe_args={'adv_lr': 5.}, n_train=256, batch_size=64, epochs=2, lr=1e-3,
                      out=str(tmp_path / 'full'), progress=False, log_every=1, ckpt_every=3)
    full = train(cfg)
    cut = TrainConfig(**{**cfg.__dict__, 'out': str(tmp_path / 'cut')})
    orig = PRETEXTS[recipe]
    class Dies(orig):                                  # the same recipe, but the process "dies" in step 7
        calls = 0
        def loss(self, model, x, y=None):
            Dies.calls += 1
            if Dies.calls == 7: raise KeyboardInterrupt
            return super().loss(model, x, y)
    monkeypatch.setitem(PRETEXTS, recipe, Dies)
    with pytest.raises(KeyboardInterrupt): train(cut)
    monkeypatch.setitem(PRETEXTS, recipe, orig)
    assert not (run_dir(cut) / 'result.json').exists()
    again = train(cut)                                 # resumes from the step-6 checkpoint
    assert again.result['steps'] == 8
    a, b = _weights(full.dir), _weights(again.dir)
    adv_keys = [k for k in a if k.endswith('delta')]
    assert adv_keys and any(a[k].abs().sum() > 0 for k in adv_keys)
    for k in a: assert torch.equal(a[k], b[k]), k
    m = full.load_model()
    assert isinstance(m, AdPEMAE) and m.config['adversary']['lr'] == 5.

def test_cli_pretrain_export_finetune(tmp_path):
    "`mimbench pretrain --recipe adpe-rpe-coord`, `mimbench export-encoder`, `mimbench finetune --init` (file and run) chain."
    cli = lambda *a: subprocess.run([str(BIN / 'mimbench'), *map(str, a)], env=ENV, capture_output=True, text=True)
    r = cli('pretrain', '--recipe', 'adpe-rpe-coord', '--n-train', 256, '--batch-size', 64, '--epochs', 1,
            '--args', '{"eps": 10}', '--no-progress', '--out', tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    pre = next(tmp_path.iterdir())
    assert 'adv_norm' in (pre / 'metrics.jsonl').read_text()
    r = cli('export-encoder', pre, '--out', tmp_path / 'enc.safetensors')
    assert r.returncode == 0, r.stderr[-2000:]
    ck = tmp_path / 'enc.safetensors'
    clf, meta = load_model(ck)
    assert meta['config']['kind'] == 'vit' and meta['config']['rpe'] and type(clf.blocks[0]).__name__ == 'RPEBlock'
    for init in (ck, pre):                             # the exported file, and the pretraining run itself
        r = cli('finetune', '--init', init, '--epochs', 1, '--n-train', 256, '--batch-size', 64, '--n-eval', 200,
                '--no-progress', '--out', tmp_path / 'ft')
        assert r.returncode == 0, r.stderr[-2000:]
        assert 'test_acc' in r.stdout
    ft = next((tmp_path / 'ft').iterdir())             # an RPE classifier is a classifier for `mimbench eval` too
    r = cli('eval', ft, '--attacks', 'pgd', '--eps', '2/255', '--n', 20)
    assert r.returncode == 0 and 'worst case' in r.stdout, r.stderr[-2000:]
    r = cli('eval', pre)                               # a pretraining run is not: one clear line, no traceback
    assert r.returncode == 1 and 'fine-tune the pretraining run first' in r.stderr and 'Traceback' not in r.stderr

def test_fresh_rpe_models_equal_the_pre_split_ones_at_a_seed():
    "Same seed, same weights as when the RPE blocks were swapped in after construction (sums of the old code's tensors)."
    import json
    want = json.loads((Path(__file__).parent / 'legacy_adpe' / 'init_sums.json').read_text())
    for name, (recipe, args) in {'adpe-rpe-coord': ('adpe-rpe-coord', {}), 'mae-plus-rpe': ('mae-plus', {'pe': 'rpe'})}.items():
        torch.manual_seed(0)
        m = PRETEXTS[recipe](**args).create_model('micro', 32, 4, 1)
        got = {k: v.double().sum().item() for k, v in m.state_dict().items()}
        assert got.keys() == want[name].keys()
        for k, v in want[name].items(): assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (name, k)
