"Datasets and augmentations: formats, ranges, errors."
import pickle
import numpy as np
import pytest, torch
from PIL import Image
from mimbench.data import AUGMENTATIONS, get_dataset, list_datasets, load_batch, random_resized_crop, subset

def _fake_cifar(root, n=6):
    d = root / 'cifar-10-batches-py'; d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        with open(d / name, 'wb') as f:
            pickle.dump({b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8), b'labels': list(range(n))}, f)
    return d

def test_fashion_mnist_shapes_and_ranges():
    for ch in (1, 3):
        ds = get_dataset('fashion-mnist', 'test', channels=ch, img_size=28)
        x, y = ds.get_batch(torch.arange(64))
        assert x.shape == (64, ch, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
    assert len(get_dataset('fashion-mnist', 'train')) == 60_000

def test_fashion_mnist_resize_keeps_content():
    small = get_dataset('fashion-mnist', 'test', channels=1, img_size=28)
    big = get_dataset('fashion-mnist', 'test', channels=1, img_size=32)
    a = small.get_batch(torch.arange(10))[0].mean((1, 2, 3)); b = big.get_batch(torch.arange(10))[0].mean((1, 2, 3))
    torch.testing.assert_close(a, b, atol=0.02, rtol=0)

def test_cifar10_from_local_batches(tmp_path):
    _fake_cifar(tmp_path)
    for root in (tmp_path, tmp_path / 'cifar-10-batches-py'):
        tr, te = get_dataset('cifar10', 'train', root=root), get_dataset('cifar10', 'test', root=root)
        assert len(tr) == 30 and len(te) == 6 and tr.images.shape[1:] == (3, 32, 32)
    raw = pickle.load(open(tmp_path / 'cifar-10-batches-py' / 'test_batch', 'rb'), encoding='bytes')[b'data']
    assert torch.equal(te.images[0].flatten(), torch.from_numpy(raw[0]))   # CHW order as stored

def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='root='): get_dataset('cifar10')
    with pytest.raises(FileNotFoundError, match='does not exist'): get_dataset('cifar10', root=tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='no python batches'): get_dataset('cifar10', root=tmp_path)
    d = _fake_cifar(tmp_path); (d / 'data_batch_3').unlink()
    with pytest.raises(FileNotFoundError, match='data_batch_3'): get_dataset('cifar10', 'train', root=tmp_path)

def test_imagefolder_round_trip(tmp_path):
    for c, colour in [('cats', (255, 0, 0)), ('dogs', (0, 0, 255))]:
        (tmp_path / c).mkdir()
        for i in range(3): Image.new('RGB', (40, 40), colour).save(tmp_path / c / f'{i}.png')
    ds = get_dataset(f'imagefolder:{tmp_path}', img_size=16)
    assert len(ds) == 6 and ds.classes == ['cats', 'dogs'] and ds.images.shape[1:] == (3, 16, 16)
    x, y = ds[0]; assert y == 0 and x[0].mean() == 1 and x[2].mean() == 0
    assert get_dataset('imagefolder', root=tmp_path, channels=1).images.shape[1] == 1

def test_imagefolder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): get_dataset(f'imagefolder:{tmp_path}/missing')
    with pytest.raises(FileNotFoundError, match='no images'): get_dataset(f'imagefolder:{tmp_path}')
    with pytest.raises(FileNotFoundError, match='needs a path'): get_dataset('imagefolder')

def test_bad_arguments():
    with pytest.raises(KeyError, match="Did you mean 'cifar10-sample'"): get_dataset('cifar10-sampel')
    with pytest.raises(KeyError, match='Known: .*fashion-mnist'): get_dataset('mnist-fashion-x')
    with pytest.raises(ValueError, match="'train' or 'test'"): get_dataset('fashion-mnist', 'validation')
    with pytest.raises(ValueError, match='channels must be 1 or 3'): get_dataset('fashion-mnist', channels=2)

def test_data_home_override(tmp_path, monkeypatch):
    monkeypatch.setenv('MIMBENCH_DATA', str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='MIMBENCH_DATA'): get_dataset('fashion-mnist')

def test_list_datasets_and_subset():
    names = {d['name']: d['available'] for d in list_datasets()}
    assert names['fashion-mnist'] and names['cifar10-sample'] and not names['cifar10']
    ds = get_dataset('cifar10-sample')
    s1, s2 = subset(ds, 5, seed=1), subset(ds, 5, seed=1)
    assert len(s1) == 5 and torch.equal(s1.images, s2.images)
    assert not torch.equal(subset(ds, 5, seed=2).images, s1.images)
    x, y = load_batch(ds, torch.tensor([3, 1]))
    assert torch.equal(y, ds.targets[[3, 1]])

@pytest.mark.parametrize('name', list(AUGMENTATIONS))
def test_augmentations_keep_shape_range_and_are_seeded(name):
    x = get_dataset('cifar10-sample').get_batch(torch.arange(20))[0]
    g = lambda: torch.Generator().manual_seed(3)
    a, b = AUGMENTATIONS[name](x, generator=g()), AUGMENTATIONS[name](x, generator=g())
    assert a.shape == x.shape and a.dtype == x.dtype and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b)
    torch.manual_seed(5); c = AUGMENTATIONS[name](x)
    torch.manual_seed(5); assert torch.equal(c, AUGMENTATIONS[name](x))   # global RNG reseeding reproduces too

def test_random_resized_crop_zooms():
    x = torch.zeros(1, 1, 32, 32); x[..., 8:24, 8:24] = 1                 # a centred square
    full = random_resized_crop(x, scale=(1., 1.), ratio=(1., 1.))
    torch.testing.assert_close(full, x, atol=1e-5, rtol=0)
    zoomed = random_resized_crop(x.repeat(16, 1, 1, 1), scale=(0.25, 0.25), ratio=(1., 1.))
    assert zoomed.mean() > x.mean()                                        # crops of a quarter area magnify the square
