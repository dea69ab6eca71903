"CKA: the estimator's properties, precision on features with a large mean, and the model/timm/data paths."
import pytest, torch
from torch import nn
from mimbench.cka import linear_cka, hsic, hsic_matrix, hsic_self, batch_grams, layer_grams, MinibatchCKA, cka_matrix, layer_features, iter_images
from mimbench.models import create_vit, to_timm
from mimbench.core import default_normalize

def feats(n, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, d, generator=g) + 0.5 * torch.randn(n, d, generator=g)
    return x, y

def minibatch(x, y, bs):
    acc = MinibatchCKA()
    for i in range(0, len(x), bs): acc.update([x[i:i + bs]], [y[i:i + bs]])
    return acc.compute()[0, 0].item()

@pytest.mark.parametrize('unbiased', [False, True])
def test_self_similarity_and_invariances(unbiased):
    x = feats(300, 20)[0].double()
    q = torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(1)).double())[0]
    assert abs(linear_cka(x, x, unbiased) - 1) < 1e-12
    assert abs(linear_cka(x, x @ q, unbiased) - 1) < 1e-10                # orthogonal
    assert abs(linear_cka(x, 7.5 * x, unbiased) - 1) < 1e-10               # isotropic scaling
    y = x[:, :5] ** 2
    assert abs(linear_cka(x @ q * 3, y, unbiased) - linear_cka(x, y, unbiased)) < 1e-10
    assert abs(linear_cka(x + 100, y - 5, unbiased) - linear_cka(x, y, unbiased)) < 1e-9   # translation

def test_not_invariant_to_invertible_linear_maps():
    x, _ = feats(500, 20)
    m = torch.diag(torch.logspace(0, 3, 20)) @ torch.linalg.qr(torch.randn(20, 20, generator=torch.Generator().manual_seed(2)))[0]
    assert torch.linalg.matrix_rank(m) == 20
    assert linear_cka(x, x @ m) < 0.9

def test_minibatch_with_one_batch_is_exact_and_approaches_it_with_more_data():
    x, y = feats(400)
    assert abs(minibatch(x, y, 400) - linear_cka(x, y, unbiased=True)) < 1e-6     # float32 Gram products
    # the per-batch estimate is consistent: its gap to the exact unbiased value on the same data shrinks with N
    gaps = {}
    for n in (200, 20000):
        x, y = feats(n, seed=3)
        gaps[n] = abs(minibatch(x, y, 50) - linear_cka(x, y, unbiased=True))
    assert gaps[20000] < gaps[200] and gaps[20000] < 2e-3, gaps

def test_unbiased_hsic_pairs_match_single_pair_formula():
    xs = [torch.randn(30, 6) for _ in range(3)]
    G = batch_grams(xs, torch.float64)
    H = hsic_matrix(G)
    for i in range(3):
        for j in range(3): assert abs(H[i, j] - hsic(G[i], G[j])) < 1e-10
    assert torch.allclose(hsic_self(G), H.diagonal())
    with pytest.raises(ValueError, match='at least 4'): hsic(G[0][:3, :3], G[1][:3, :3])

def test_float32_precision_with_large_feature_mean():
    "ViT tokens share a large mean; centring per batch keeps float32 Grams within 1e-5 of float64."
    g = torch.Generator().manual_seed(0)
    base = torch.randn(400, 64, 32, generator=g)
    a, b = base + 50., (base + 0.7 * torch.randn(400, 64, 32, generator=g)) * 3 + 80.
    ours, ref = MinibatchCKA(), MinibatchCKA()
    for i in range(0, 400, 100):
        ours.update([a[i:i + 100], b[i:i + 100]])
        ref.update([a[i:i + 100].double(), b[i:i + 100].double()], dtype=torch.float64)
    assert (ours.compute() - ref.compute()).abs().max() < 1e-5

def test_empty_accumulator_is_an_error():
    acc = MinibatchCKA().update([torch.randn(3, 5)])                         # n < 4 batches are skipped
    with pytest.raises(ValueError, match='No batch'): acc.compute()

def test_model_maps_timm_and_data_forms():
    torch.manual_seed(0)
    va, vb = create_vit('micro', num_classes=10).eval(), create_vit('micro', num_classes=10).eval()
    x = torch.rand(48, 3, 32, 32)
    m = cka_matrix(va, x, batch_size=16, progress=False)
    assert m.shape == (4, 4) and torch.allclose(m.diagonal(), torch.ones(4, dtype=m.dtype)) and torch.allclose(m, m.T)
    cross = cka_matrix(va, x, vb, batch_size=16, include_norm=True, progress=False)
    assert cross.shape == (5, 5) and (cross <= 1 + 1e-9).all()
    tv = nn.Sequential(default_normalize(3), to_timm(va))                   # hooks on a timm model's blocks
    assert [f.shape for f in layer_features(tv, x[:2], include_norm=True)] == [f.shape for f in layer_features(va, x[:2], True)]
    assert torch.allclose(cka_matrix(tv, x, batch_size=16, progress=False), m, atol=1e-5)
    assert torch.allclose(layer_grams(va, x[:8], True), batch_grams(layer_features(va, x[:8], True)), rtol=1e-4, atol=1e-3)
    import timm                                                              # a native timm ViT, blocks + final norm
    tm = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=4, depth=3, num_classes=10)
    tmap = cka_matrix(tm, x, va, batch_size=16, include_norm=True, progress=False)
    assert tmap.shape == (4, 5) and torch.isfinite(tmap).all()
    ds = torch.utils.data.TensorDataset(x, torch.zeros(48))
    for data in [(x, torch.zeros(48)), torch.utils.data.DataLoader(ds, batch_size=16)]:
        assert torch.allclose(cka_matrix(va, data, batch_size=16, progress=False), m)
    assert sum(len(b) for b in iter_images(x, n=40, batch_size=16)) == 40
    with pytest.raises(TypeError, match='blocks'): layer_features(nn.Linear(3, 3), x)

def test_trained_model_self_map(quick_model, fmnist_test):
    m = cka_matrix(quick_model, fmnist_test, n=200, batch_size=50, progress=False)
    assert torch.allclose(m.diagonal(), torch.ones(len(m), dtype=m.dtype)) and (m > 0).all()
