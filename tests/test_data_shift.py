"Distribution shift data (issue 15, Rebuffi et al.): CIFAR-10 batches read safely, fog/snow/glass blur, natural-shift sets."
import os, pickle, pickletools
from pathlib import Path
import numpy as np
import pytest, torch
from PIL import Image
from mimbench.data import (CORRUPTIONS, CIFAR_PICKLE_GLOBALS, NotACifarBatch, corrupt, corruption_names, get_dataset,
                           list_datasets, local_shuffle, plasma_fractal, read_cifar_batch, remap_classes, synthetic_cifar10,
                           write_cifar_batch)

NEW = ['fog', 'snow', 'glass_blur']

# ---------------------------------------------------------------- CIFAR-10 python batches, read without running code

def test_synthetic_root_is_written_like_the_originals_and_loads(tmp_path):
    d = synthetic_cifar10(tmp_path, n=10, seed=3)
    raw = (d / 'data_batch_1').read_bytes()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert raw[:2] == b'\x80\x02'                                           # protocol 2, as Python 2's cPickle wrote them
    assert {a for n, a in ops if n == 'GLOBAL'} == {'numpy.core.multiarray _reconstruct', 'numpy ndarray', 'numpy dtype'}
    assert ('SHORT_BINSTRING', 'data') in ops and not any(n == 'BINUNICODE' for n, _ in ops)   # byte strings, no unicode
    # an independent reader (plain pickle, as everyone read them) sees the standard structure
    ref = pickle.load(open(d / 'data_batch_1', 'rb'), encoding='bytes')
    assert set(ref) == {b'batch_label', b'labels', b'data', b'filenames'}
    assert ref[b'data'].dtype == np.uint8 and ref[b'data'].shape == (10, 3072) and len(ref[b'labels']) == 10
    for root in (tmp_path, d):
        tr, te = get_dataset('cifar10', 'train', root=root), get_dataset('cifar10', 'test', root=root)
        assert len(tr) == 50 and len(te) == 10 and te.images.shape == (10, 3, 32, 32)
    test_ref = pickle.load(open(d / 'test_batch', 'rb'), encoding='bytes')
    assert torch.equal(te.images, torch.from_numpy(test_ref[b'data']).reshape(10, 3, 32, 32))   # CHW as stored
    assert te.targets.tolist() == test_ref[b'labels']
    tr_labels = sum((pickle.load(open(d / f'data_batch_{i}', 'rb'), encoding='bytes')[b'labels'] for i in range(1, 6)), [])
    assert tr.targets.tolist() == tr_labels

def test_known_pixels_survive_the_round_trip(tmp_path):
    x = np.arange(2 * 3072, dtype=np.int64).reshape(2, 3, 32, 32) % 256
    write_cifar_batch(tmp_path / 'b', x.astype(np.uint8), [7, 2])
    images, labels = read_cifar_batch(tmp_path / 'b')
    assert labels == [7, 2] and images.dtype == np.uint8 and (images == x).all()
    assert images[1, 2, 31, 31] == (2 * 3072 - 1) % 256                      # last pixel of the blue plane

class _RunsCode:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))

@pytest.mark.parametrize('protocol', [2, 4])
def test_a_batch_that_would_run_code_is_refused_before_running(tmp_path, protocol):
    d = synthetic_cifar10(tmp_path, n=2)
    marker = tmp_path / 'code_ran'
    evil = pickle.dumps([_RunsCode(marker)], protocol=protocol)             # (no bytes: protocol 2 would wrap them in _codecs.encode)
    pickle.loads(evil); assert marker.exists(); marker.unlink()             # plain pickle.load would have run it
    (d / 'test_batch').write_bytes(evil)
    with pytest.raises(NotACifarBatch, match=r'posix\.system|nt\.system') as e:
        get_dataset('cifar10', 'test', root=tmp_path)
    assert 'not a CIFAR-10 batch' in str(e.value) and 'test_batch' in str(e.value)
    assert not marker.exists()

def test_only_the_formats_globals_are_admitted(tmp_path):
    assert set(CIFAR_PICKLE_GLOBALS) == {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                                         ('numpy', 'ndarray'), ('numpy', 'dtype')}
    synthetic_cifar10(tmp_path, n=2); d = tmp_path / 'cifar-10-batches-py'
    cases = {  # content → what the error names
        'builtins eval': pickle.dumps({b'data': eval, b'labels': []}, protocol=2),
        'numpy dtype': pickle.dumps({b'data': np.zeros((1, 3072), np.float32), b'labels': [0]}, protocol=4),   # not uint8
        "object arrays": pickle.dumps({b'data': np.array([None, 1], dtype=object), b'labels': [0]}, protocol=4),
        'subclass': pickle.dumps({b'data': np.zeros((1, 3072), np.uint8).view(np.recarray), b'labels': [0]}, protocol=4),
        'structure': pickle.dumps({b'data': np.zeros((2, 10), np.uint8), b'labels': [0, 1]}, protocol=4),
        'labels': pickle.dumps({b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 11]}, protocol=4),
    }
    for what, blob in cases.items():
        (d / 'test_batch').write_bytes(blob)
        with pytest.raises(NotACifarBatch, match='not a CIFAR-10 batch'): get_dataset('cifar10', 'test', root=tmp_path)
    # what numpy ≥ 2 under Python 3 writes (protocol 4: numpy._core) is the same format and loads
    (d / 'test_batch').write_bytes(pickle.dumps({b'data': np.full((3, 3072), 9, np.uint8), b'labels': [1, 2, 3]}, protocol=4))
    te = get_dataset('cifar10', 'test', root=tmp_path)
    assert te.targets.tolist() == [1, 2, 3] and (te.images == 9).all()

# ---------------------------------------------------------------- fog, snow, glass blur

def test_registered_like_the_others():
    for n in NEW:
        c = CORRUPTIONS[n]
        assert len(c.params) == 5 and c.random and not c.colour_only     # grey images too (see the notebook)
    assert len(CORRUPTIONS) == 15 and corruption_names(1) == [n for n in CORRUPTIONS if n != 'saturate']
    assert CORRUPTIONS['glass_blur'].params == ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))
    assert CORRUPTIONS['fog'].params == ((.2, 3), (.5, 3), (.75, 2.5), (1, 2), (1.5, 1.75))
    assert CORRUPTIONS['snow'].params[4] == (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)

@pytest.mark.parametrize('name', NEW)
def test_range_shape_and_determinism_per_seed(name, colour, grey):
    for x in (colour, grey, colour.double(), torch.rand(2, 3, 40, 40), torch.rand(2, 1, 16, 16)):
        for s in (1, 5):
            y = corrupt(x, name, s, seed=4)
            assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
            assert torch.equal(y, corrupt(x, name, s, seed=4))
        assert not torch.equal(corrupt(x, name, 3, seed=4), corrupt(x, name, 3, seed=5))
    assert torch.equal(corrupt(colour[4:7], name, 2, seed=1, index=[4, 5, 6]), corrupt(colour, name, 2, seed=1)[4:7])

def _mad(x, name, s): return (corrupt(x, name, s) - x).abs().mean().item()

@pytest.mark.parametrize('name', ['fog', 'snow'])
def test_fog_and_snow_grow_with_severity(name, colour, grey):
    for x in (colour, grey):
        d = [_mad(x, name, s) for s in range(6)]
        assert d[0] == 0 and all(a < b for a, b in zip(d, d[1:])), (name, x.shape[1], d)

def test_glass_blur_severity_order(colour, grey):
    # Published levels mix two knobs (σ, sweeps): at one sweep a stronger blur *hides* swaps, so pixel distance is
    # not ordered 1 < 2 < 3; what holds is sweeps at equal σ, and 5 beyond 1.
    for x in (colour, grey):
        d = {s: _mad(x, 'glass_blur', s) for s in range(1, 6)}
        assert d[4] > d[2] and d[5] > d[3] and d[5] > d[1], d

def test_glass_blur_moves_pixels_and_keeps_them(colour):
    g = [torch.Generator().manual_seed(i) for i in range(len(colour))]
    y = local_shuffle(colour, 1, 2, g)
    for a, b in zip(colour, y):                                             # the same pixels (RGB triples), elsewhere
        assert torch.equal(a.reshape(3, -1).T.unique(dim=0, sorted=True), b.reshape(3, -1).T.unique(dim=0, sorted=True))
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
    assert not torch.equal(y, colour)
    # blurred twice with edge replication around a permutation: the image's mean brightness barely moves
    assert (corrupt(colour, 'glass_blur', 5).mean((1, 2, 3)) - colour.mean((1, 2, 3))).abs().max() < 0.01

def _low_freq_share(img, r=4):
    f = torch.fft.fftshift(torch.fft.fft2(img - img.mean((-2, -1), keepdim=True)), dim=(-2, -1)).abs() ** 2
    h, w = img.shape[-2:]
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing='ij')
    return (f[..., (yy ** 2 + xx ** 2) <= r * r].sum(-1) / f.sum((-2, -1))).mean().item()

def test_fog_adds_a_grey_low_frequency_haze(colour):
    c = CORRUPTIONS['fog'].params[0][0]
    y = corrupt(colour, 'fog', 1).double(); x = colour.double()
    top = x.amax((1, 2, 3), keepdim=True)
    haze = (y * (top + c) / top - x) / c                                   # invert (x + c·haze)·top/(top + c)
    assert torch.allclose(haze, haze[:, :1].expand_as(haze), atol=1e-5)     # the same in every channel: grey
    assert haze.min() > -1e-5 and haze.max() < 1 + 1e-5
    # its energy sits at low spatial frequencies (|k| ≤ 4 of 16), unlike white noise (≈ 5 % there)
    assert _low_freq_share(haze[:, 0]) > 0.8 > 0.1 > _low_freq_share(torch.rand(20, 32, 32, dtype=torch.float64))
    f = plasma_fractal([torch.Generator().manual_seed(0)], 32, 3)
    assert f.shape == (1, 32, 32) and f.min() == 0 and f.max() == 1
    # rougher decay (higher severities) ⇒ less of the haze at low frequencies
    g = [torch.Generator().manual_seed(i) for i in range(20)]
    assert _low_freq_share(plasma_fractal(g, 32, 3)) > _low_freq_share(plasma_fractal(g, 32, 1.75))

def test_snow_only_brightens(colour, grey):
    for x in (colour, grey):
        for s in range(1, 6):
            y = corrupt(x, 'snow', s, seed=2)
            assert (y >= x - 1e-6).all()                                    # flakes and the grey lift only add light
            assert y.mean() > x.mean()
    y = corrupt(colour, 'snow', 5); assert (y > 0.99).float().mean() > (colour > 0.99).float().mean() + 0.02   # more white

# ---------------------------------------------------------------- natural-shift sets from local files

def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), colour, np.uint8)).save(path)

def test_cifar10_1_v6_and_v4(tmp_path):
    rng = np.random.default_rng(1)
    x6, x4 = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    (tmp_path / 'datasets').mkdir()
    np.save(tmp_path / 'datasets' / 'cifar10.1_v6_data.npy', x6); np.save(tmp_path / 'datasets' / 'cifar10.1_v6_labels.npy', np.arange(7) % 10)
    np.save(tmp_path / 'cifar10.1_v4_data.npy', x4); np.save(tmp_path / 'cifar10.1_v4_labels.npy', np.array([9, 8, 7, 6, 5]))
    v6, v4 = get_dataset('cifar10.1', 'test', root=tmp_path), get_dataset('cifar10.1-v4', 'test', root=tmp_path)
    assert torch.equal(v6.images, torch.from_numpy(x6).permute(0, 3, 1, 2)) and v6.targets.tolist() == list(range(7))
    assert torch.equal(v4.images, torch.from_numpy(x4).permute(0, 3, 1, 2)) and v4.targets.tolist() == [9, 8, 7, 6, 5]
    assert v6.classes[0] == 'airplane' and v6.name == 'cifar10.1' and v4.name == 'cifar10.1-v4'
    g = get_dataset('cifar10.1', 'test', root=tmp_path, channels=1, img_size=16)
    assert g.images.shape == (7, 1, 16, 16)
    with pytest.raises(ValueError, match="split='test'"): get_dataset('cifar10.1', root=tmp_path)
    with pytest.raises(FileNotFoundError, match='cifar10.1_v6_data.npy'): get_dataset('cifar10.1', 'test', root=tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='root='): get_dataset('cifar10.1', 'test')
    (tmp_path / 'datasets' / 'cifar10.1_v6_data.npy').unlink()
    with pytest.raises(FileNotFoundError, match="v4 files are there: use 'cifar10.1-v4'"): get_dataset('cifar10.1', 'test', root=tmp_path)

def test_cifar10_c_selects_the_severity_block(tmp_path):
    n = 3
    data = np.stack([np.full((32, 32, 3), 10 * s + i, np.uint8) for s in range(1, 6) for i in range(n)])   # pixel = 10·sev + i
    np.save(tmp_path / 'glass_blur.npy', data); np.save(tmp_path / 'labels.npy', np.tile(np.array([4, 0, 9], np.uint8), 5))
    for s in range(1, 6):
        ds = get_dataset(f'cifar10-c:glass_blur:{s}', 'test', root=tmp_path)
        assert ds.images[:, 0, 0, 0].tolist() == [10 * s + i for i in range(n)] and ds.targets.tolist() == [4, 0, 9]
        assert ds.name == f'cifar10-c:glass_blur:{s}'
    with pytest.raises(ValueError, match="'cifar10-c:fog:3'"): get_dataset('cifar10-c', 'test', root=tmp_path)
    with pytest.raises(ValueError, match='severity 1–5'): get_dataset('cifar10-c:glass_blur:0', 'test', root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r'fog\.npy, labels\.npy.*found there: glass_blur'):
        get_dataset('cifar10-c:fog:1', 'test', root=tmp_path)
    np.save(tmp_path / 'labels.npy', np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match='5 severities'): get_dataset('cifar10-c:glass_blur:1', 'test', root=tmp_path)
    # .npy files are opened without pickle: an object array (which could run code when unpickled) is refused
    np.save(tmp_path / 'evil.npy', np.array([_RunsCode(tmp_path / 'ran')], dtype=object), allow_pickle=True)
    np.save(tmp_path / 'labels.npy', np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match='allow_pickle=False'): get_dataset('cifar10-c:evil:1', 'test', root=tmp_path)
    assert not (tmp_path / 'ran').exists()

def test_imagenet_c_and_variants_from_folder_trees(tmp_path):
    wnids = ['n01443537', 'n01484850', 'n01494475']
    for i, w in enumerate(wnids):
        for s in (1, 3):
            _png(tmp_path / 'inc' / 'fog' / str(s) / w / f'{w}_{s}.JPEG', 40 * i + s)
        _png(tmp_path / 'inc2' / 'blur' / 'glass_blur' / '2' / w / 'a.JPEG', 40 * i)     # with a category level
        _png(tmp_path / 'r' / w / 'art_1.jpg', 50 * i)
        _png(tmp_path / 'sk' / 'sketch' / w / 's.JPEG', 60 * i)
    c = get_dataset('imagenet-c:fog:3', 'test', root=tmp_path / 'inc', img_size=8)
    assert c.name == 'imagenet-c:fog:3' and c.classes == wnids and c.targets.tolist() == [0, 1, 2]
    assert c.images.shape == (3, 3, 8, 8) and c.images[:, 0, 0, 0].tolist() == [3, 43, 83]
    assert len(get_dataset('imagenet-c:glass_blur:2', 'test', root=tmp_path / 'inc2', img_size=8)) == 3
    with pytest.raises(FileNotFoundError, match=r'fog/5/<wnid>/\*\.JPEG'): get_dataset('imagenet-c:fog:5', 'test', root=tmp_path / 'inc')
    r = get_dataset('imagenet-r', 'test', root=tmp_path / 'r', img_size=8)
    assert r.name == 'imagenet-r' and r.classes == wnids and r.images[:, 0, 0, 0].tolist() == [0, 50, 100]
    sk = get_dataset('imagenet-sketch', 'test', root=tmp_path / 'sk', img_size=8, channels=1)
    assert sk.images.shape == (3, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match='class folders'): get_dataset('imagenet-a', 'test', root=tmp_path / 'inc' / 'fog' / '1' / wnids[0])
    # -R and -A hold 200 of the 1,000 classes: renumber into a model's class list
    full = ['n01440764'] + wnids[:1] + ['n01443999'] + wnids[1:]
    rr = remap_classes(r, full)
    assert rr.targets.tolist() == [1, 3, 4] and rr.classes == full
    with pytest.raises(KeyError, match='n01494475'): remap_classes(r, full[:4])

def test_info_lists_the_new_sets():
    rows = {d['name']: d for d in list_datasets()}
    for n in ['cifar10.1', 'cifar10.1-v4', 'cifar10-c', 'imagenet-c', 'imagenet-r', 'imagenet-a', 'imagenet-sketch']:
        assert n in rows and not rows[n]['available'] and rows[n]['description']
    assert 'cifar10-c:<corruption>:<severity>' in rows['cifar10-c']['description']
    from mimbench.cli import info_text
    text = info_text('/nonexistent')
    assert 'imagenet-sketch' in text and 'cifar10-c:<corruption>:<severity>' in text and 'glass_blur' in text
