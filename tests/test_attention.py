"Attention maps, rollout, mean attention distance and captum attributions on mimbench and timm ViTs."
import math, pytest, torch, timm
from torch import nn
from mimbench.attention import (attention_maps, attention_rollout, mean_attention_distance, patch_distances, query_map,
                                query_index, num_prefix_tokens, attribute, attribution_shift, min_flip_eps, overlay, show_attention)
from mimbench.models import create_vit, to_timm
from mimbench.core import default_normalize

def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(10).expand(6, 3, 2, 10, 10)
    for fusion in ('mean', 'max', 'min'):
        assert torch.allclose(attention_rollout(eye, fusion), torch.eye(10).expand(3, 10, 10))
        assert torch.allclose(attention_rollout(eye, fusion, residual=False), torch.eye(10).expand(3, 10, 10))
    with pytest.raises(ValueError, match='head_fusion'): attention_rollout(eye, 'median')

def test_rollout_rows_are_distributions():
    a = torch.rand(4, 2, 3, 17, 17).softmax(-1)
    r = attention_rollout(a)
    assert torch.allclose(r.sum(-1), torch.ones(2, 17), atol=1e-5) and (r >= 0).all()

@pytest.mark.parametrize('g', [2, 3, 5])
def test_mean_attention_distance_of_uniform_attention(g):
    T = 1 + g * g
    uni = torch.full((2, 3, 4, T, T), 1 / T)
    # closed form: the mean distance between two independent uniform cells of a g×g grid
    cells = [(r, c) for r in range(g) for c in range(g)]
    expected = sum(math.dist(p, q) for p in cells for q in cells) / len(cells) ** 2
    if g == 2: assert abs(expected - (.5 + math.sqrt(2) / 4)) < 1e-12
    assert torch.allclose(mean_attention_distance(uni, patch_size=4), torch.full((2, 4), 4 * expected), atol=1e-5)

def test_mean_attention_distance_of_local_attention():
    g, T = 4, 17
    d = patch_distances(g)
    a = torch.zeros(1, 1, 1, T, T); a[..., 0, :] = 1 / T
    a[0, 0, 0, 1:, 1:] = (d == 1).double() / (d == 1).sum(1, keepdim=True)   # attend to the 4-neighbours
    assert torch.allclose(mean_attention_distance(a), torch.ones(1, 1), atol=1e-6)

def test_query_index_and_map():
    assert query_index('cls', 4) == 0 and query_index(5, 4) == 6 and query_index((1, 1), 4) == 6
    with pytest.raises(ValueError, match='outside'): query_index((4, 0), 4)
    with pytest.raises(ValueError, match='no cls'): query_index('cls', 4, prefix=0)
    a = torch.arange(17 * 17.).view(17, 17)
    assert torch.equal(query_map(a, (0, 1)), a[2, 1:].view(4, 4))

def test_maps_on_mimbench_and_timm_models():
    torch.manual_seed(0)
    v = create_vit('micro', in_chans=1, patch_size=8).eval()
    x = torch.rand(2, 1, 32, 32)
    maps = attention_maps(v, x)
    assert maps.shape == (4, 2, 4, 17, 17) and torch.allclose(maps.sum(-1), torch.ones(4, 2, 4, 17), atol=1e-5)
    tv = nn.Sequential(default_normalize(1), to_timm(v))
    assert torch.allclose(attention_maps(tv, x), maps, atol=1e-5)
    assert num_prefix_tokens(v) == 1 and num_prefix_tokens(tv) == 1 and num_prefix_tokens(num_tokens=65) == 1
    tm = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=4, num_classes=10)
    fused = [m.fused_attn for m in tm.modules() if hasattr(m, 'fused_attn')]
    assert attention_maps(tm, torch.rand(1, 3, 32, 32)).shape == (12, 1, 3, 65, 65)
    assert [m.fused_attn for m in tm.modules() if hasattr(m, 'fused_attn')] == fused      # restored
    mad = mean_attention_distance(attention_maps(tm, torch.rand(2, 3, 32, 32)), patch_size=4)
    assert mad.shape == (12, 3) and (mad > 0).all()
    with pytest.raises(TypeError, match='attention'): attention_maps(nn.Linear(3, 3), torch.rand(2, 3))

def test_figures_show_the_map_they_name(quick_model, fmnist_test):
    "Each panel is the attention of the named block/head/query, upsampled, normalised and not transposed."
    import matplotlib; matplotlib.use('Agg')
    import torch.nn.functional as F
    heat = torch.zeros(4, 4); heat[1, 2] = 1.                                    # one hot cell: row 1, column 2
    h = torch.as_tensor(overlay(torch.zeros(1, 32, 32), heat).images[1].get_array())
    hot = (h > 0.5).nonzero().float().mean(0)
    assert h.shape == (32, 32) and h.max() == 1 and 8 <= hot[0] < 16 and 16 <= hot[1] < 24     # row 1, column 2 of 8-px cells
    x, _ = fmnist_test.get_batch(range(2))
    fig = show_attention(quick_model, x, query=(1, 2), blocks=[0, 3], head=1)
    assert len(fig.axes) == 2 * 4
    maps = attention_maps(quick_model, x)                                        # blocks × images × heads × 17 × 17
    norm = lambda m: (lambda u: (u - u.min()) / (u.max() - u.min()))(F.interpolate(m[None, None], size=(32, 32), mode='bilinear')[0, 0])
    for i in range(2):
        for j, b in enumerate([0, 3]):                                           # query token: cls + row 1 × 4 + column 2
            want = norm(maps[b, i, 1, 1 + 4 * 1 + 2, 1:].reshape(4, 4))
            got = torch.as_tensor(fig.axes[i * 4 + j + 1].images[1].get_array())
            assert torch.allclose(got.float(), want, atol=1e-5), (i, b)

def test_attributions(quick_model, fmnist_test):
    x, y = fmnist_test.get_batch(range(4))
    ig = attribute(quick_model, x, y, reduce=False, n_steps=64)
    with torch.no_grad():
        gap = quick_model(x).gather(1, y[:, None])[:, 0] - quick_model(torch.zeros_like(x)).gather(1, y[:, None])[:, 0]
    assert torch.allclose(ig.sum((1, 2, 3)), gap, atol=0.05 * gap.abs().max().item() + 1e-3)    # completeness
    sal = attribute(quick_model, x, y, method='saliency', reduce=False)
    xg = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(quick_model(xg).gather(1, y[:, None]).sum(), xg)
    assert torch.allclose(sal, g.abs(), atol=1e-6)                                           # saliency = |∂logit/∂x|
    assert attribute(quick_model, x, method='smoothgrad', nt_samples=4).shape == (4, 32, 32)
    assert torch.allclose(attribution_shift(quick_model, x, x), torch.ones(4), atol=1e-5)
    with pytest.raises(ValueError, match='Unknown attribution'): attribute(quick_model, x, method='lime')

def test_min_flip_eps(quick_model, fmnist_test):
    x, y = fmnist_test.get_batch(range(3))
    e = min_flip_eps(quick_model, x, y, eps_max='32/255', steps=8)
    grid = torch.arange(1, 9) * 4 / 255
    for ei, xi, yi in zip(e, x, y):
        if ei.isinf(): continue
        assert torch.isclose(grid, ei).any()                                                # a grid value
        from mimbench.attacks import perturb, classifier_loss
        xa = perturb(classifier_loss(quick_model, yi.view(1)), xi[None], ei.item(), steps=1, alpha=ei.item(), random_start=False)
        assert quick_model(xa).argmax(1).item() != yi.item()                                # it really fools the model
