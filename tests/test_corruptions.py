"Corruption suite and distribution-shift harness: severity ordering, range/shape/dtype, determinism, cache, harness, CLI."
import json, subprocess, sys
from pathlib import Path
import pytest, torch
from hypothesis import given, settings, strategies as st
from mimbench.data import (CORRUPTIONS, CorruptedDataset, corrupt, corrupt_dataset, corruption_names, get_dataset, subset)
from mimbench.corruptions import build_suite, layer_decay_sweep, suite_psnr
from mimbench.defenses import psnr
from mimbench.evaluate import ShiftReport, shift_accuracy, robust_accuracy
from mimbench.models import save_model
from mimbench.train import accuracy

BIN = Path(sys.executable).parent

@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_severity_orders_damage(name, colour, grey):
    for x in ([colour] if CORRUPTIONS[name].colour_only else [colour, grey]):
        assert torch.equal(corrupt(x, name, 0), x)                           # severity 0 = clean
        p1, p5 = psnr(corrupt(x, name, 1), x).mean(), psnr(corrupt(x, name, 5), x).mean()
        assert p5 < p1 < 100, (name, x.shape[1], p1.item(), p5.item())       # PSNR falls from severity 1 to 5

@pytest.mark.parametrize('name', list(CORRUPTIONS))
def test_range_shape_dtype_and_determinism(name, colour):
    for dtype in (torch.float32, torch.float64):
        x = colour.to(dtype)
        y = corrupt(x, name, 4, seed=7)
        assert y.shape == x.shape and y.dtype == dtype
        assert 0 <= y.min() and y.max() <= 1
        assert torch.equal(y, corrupt(x, name, 4, seed=7))                   # same seed ⇒ identical images
    if CORRUPTIONS[name].random:
        assert not torch.equal(corrupt(colour, name, 4, seed=7), corrupt(colour, name, 4, seed=8))
        # an image's corruption depends on its index, not on the batch it is computed in
        assert torch.equal(corrupt(colour[5:9], name, 4, seed=7, index=range(5, 9)), corrupt(colour, name, 4, seed=7)[5:9])

@settings(max_examples=15, deadline=None)
@given(st.sampled_from([c for c in CORRUPTIONS]), st.integers(0, 5), st.integers(0, 2**31), st.sampled_from([16, 32, 40]))
def test_any_image_stays_an_image(name, severity, seed, size):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, size, size, generator=g)
    x[0] = 0; x[1] = 1                                                       # extremes too
    y = corrupt(x, name, severity, seed)
    assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1

def test_unknown_names_list_the_known_ones(colour, fmnist_test, quick_model):
    with pytest.raises(KeyError, match="Did you mean 'gaussian_noise'.*Known: .*brightness"): corrupt(colour, 'gausian_noise')
    with pytest.raises(KeyError, match='Known:'): get_dataset('cifar10-sample', 'test', corruption='fogg')
    with pytest.raises(KeyError, match="Did you mean 'motion_blur'"): shift_accuracy(quick_model, fmnist_test, corruptions='motion_blurr')
    with pytest.raises(ValueError, match='0–5'): corrupt(colour, 'contrast', 7)
    with pytest.raises(ValueError, match='3-channel'): corrupt(colour[:, :1], 'saturate')

def test_build_suite_checks_everything_before_any_work(tmp_path, fmnist_test):
    ds = subset(fmnist_test, 8)
    with pytest.raises(KeyError, match='Unknown corruption'): build_suite(ds, ['contrast', 'nope'], cache=tmp_path, progress=False)
    with pytest.raises(ValueError, match='0–5'): build_suite(ds, ['contrast'], [1, 7], cache=tmp_path, progress=False)
    assert not any(tmp_path.rglob('*.*'))                      # nothing half-built: the valid 'contrast' set was not started

def test_cache_keyed_atomic_and_equal_to_lazy(tmp_path, fmnist_test):
    ds = subset(fmnist_test, 64)
    a = corrupt_dataset(ds, 'shot_noise', 3, seed=1, cache=tmp_path)
    files = list(tmp_path.rglob('*.safetensors'))
    assert len(files) == 1 and 'shot_noise-s3-seed1' in files[0].name
    assert not list(tmp_path.rglob('*.tmp'))                                 # written atomically, nothing left behind
    assert torch.equal(corrupt_dataset(ds, 'shot_noise', 3, seed=1, cache=tmp_path).images, a.images)
    lazy = CorruptedDataset(ds, 'shot_noise', 3, seed=1)
    assert torch.equal(lazy.get_batch(range(64))[0], a.get_batch(range(64))[0])
    corrupt_dataset(ds, 'shot_noise', 3, seed=2, cache=tmp_path)             # another seed, another key
    corrupt_dataset(subset(fmnist_test, 64, seed=1), 'shot_noise', 3, seed=1, cache=tmp_path)   # other images, other key
    assert len(list(tmp_path.rglob('*.safetensors'))) == 3
    # any dataset, e.g. a plain list of (image, label) pairs
    items = [(ds[i][0], ds[i][1]) for i in range(8)]
    assert torch.equal(CorruptedDataset(items, 'shot_noise', 3, seed=1).get_batch(range(8))[0], lazy.get_batch(range(8))[0])

def test_clean_accuracy_agrees_everywhere(quick_model, fmnist_test):
    r = shift_accuracy(quick_model, fmnist_test, corruptions=[], n=400, progress=False)
    assert r.clean == accuracy(quick_model, fmnist_test, n=400)
    assert r.mean_corruption_accuracy is None and r.corruptions == []
    rob = robust_accuracy(quick_model, fmnist_test, attacks=['fgsm'], eps='1/255', n=400, progress=False, sanity=False)
    assert abs(rob.clean - r.clean) < 1e-6
    x, y = fmnist_test.get_batch(range(100))                                 # tensors work too (lazy, uncached)
    s0 = shift_accuracy(quick_model, (x, y), corruptions='contrast', severities=[0], progress=False)
    assert s0.accuracy['contrast']['0'] == s0.clean == accuracy(quick_model, fmnist_test, n=100)

def test_shift_report(quick_model, fmnist_test, tmp_path):
    r = shift_accuracy(quick_model, fmnist_test, corruptions='all', severities=[1, 5], n=200, cache=tmp_path, progress=False)
    grey = corruption_names(1)                                  # every registered corruption that applies to 1 channel
    assert r.skipped == ['saturate'] and r.corruptions == grey and len(grey) >= 11
    for c in r.corruptions: assert r.accuracy[c]['5'] <= r.accuracy[c]['1'] + 0.05, (c, r.accuracy[c])
    assert r.mean_corruption_accuracy < r.clean
    assert abs(r.relative_drop - (1 - r.mean_corruption_accuracy / r.clean)) < 1e-12
    assert abs(r.mean_corruption_accuracy - sum(r.per_corruption.values()) / len(grey)) < 1e-9
    back = ShiftReport.from_json(r.to_json(tmp_path / 's.json') and tmp_path / 's.json')
    assert back.accuracy == r.accuracy
    md = r.to_markdown()
    assert '| **mean** |' in md and 'relative drop' in md and 'saturate' in md
    r.plot(tmp_path / 'h.png'); assert (tmp_path / 'h.png').stat().st_size > 2000

def test_eval_cli_runs_attacks_and_corruptions_in_one_report(quick_model, tmp_path):
    ckpt = tmp_path / 'run' / 'model.safetensors'
    save_model(ckpt, quick_model, train_config={'dataset': 'fashion-mnist', 'channels': 1})
    p = subprocess.run([str(BIN / 'mimbench'), 'eval', str(ckpt.parent), '--attacks', 'fgsm', '--eps', '1/255', '--n', '60',
                        '--corruptions', 'contrast,gaussian_noise', '--severities', '1,5', '--cache', str(tmp_path / 'c'),
                        '--no-progress'], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = (ckpt.parent / 'eval_report.md').read_text()
    assert '**worst case**' in rep and 'mean corruption accuracy' in rep
    sh = json.loads((ckpt.parent / 'shift_accuracy.json').read_text())
    assert sh['corruptions'] == ['contrast', 'gaussian_noise'] and sh['severities'] == [1, 5] and sh['n'] == 60
    rob = json.loads((ckpt.parent / 'robust_accuracy.json').read_text())
    assert abs(rob['clean'] - sh['clean']) < 1e-6
    p = subprocess.run([str(BIN / 'mimbench'), 'eval', str(ckpt.parent), '--attacks', 'none', '--corruptions', 'all',
                        '--severities', '3', '--n', '30', '--cache', str(tmp_path / 'c'), '--out', str(tmp_path / 'o'),
                        '--no-progress'], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / 'o' / 'shift_accuracy.json').read_text())['skipped'] == ['saturate']
    assert not (tmp_path / 'o' / 'robust_accuracy.json').exists()

def test_corrupt_cli_builds_the_cache(tmp_path):
    p = subprocess.run([str(BIN / 'mimbench'), 'corrupt', '--n', '50', '--corruptions', 'pixelate,jpeg_compression',
                        '--severities', '1,2', '--cache', str(tmp_path), '--no-progress'], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert '4 shifted sets of 50 images' in p.stdout and len(list(tmp_path.rglob('*.safetensors'))) == 4

def test_lr_sweep_python_and_cli(tmp_path):
    from mimbench.train import TrainConfig
    cfg = TrainConfig(task='finetune', recipe='ce', preset='micro', patch_size=8, channels=1, n_train=400, epochs=1,
                      batch_size=100, lr=2e-3, eval_split=None, out=str(tmp_path), progress=False)
    sw = layer_decay_sweep(cfg, decays=(0.65, 0.95), corruptions=['contrast'], severities=(5,), n_eval=100,
                           cache=tmp_path / 'c', progress=False)
    assert [r['layer_decay'] for r in sw.rows] == [0.65, 0.95] and sw.rows[0]['run'] != sw.rows[1]['run']
    assert all(r['robust'] is None and 0 <= r['mca'] <= 1 for r in sw.rows)
    p = subprocess.run([str(BIN / 'mimbench'), 'lr-sweep', '--decays', '0.65,0.95', '--n-train', '400', '--batch-size', '100',
                        '--lr', '2e-3', '--patch-size', '8', '--augment', 'none', '--corruptions', 'contrast',
                        '--severities', '5', '--n-eval', '100', '--out', str(tmp_path), '--cache', str(tmp_path / 'c'),
                        '--no-progress'], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert '| scratch | 0.65 |' in p.stdout and '| scratch | 0.95 |' in p.stdout
    assert len(list(tmp_path.glob('lr-sweep-*.json'))) == 2
