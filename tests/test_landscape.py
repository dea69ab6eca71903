"Loss landscapes (weight and input space) and patch-embedding filter PCA."
import pytest, torch, timm
import numpy as np
import torch.nn.functional as F
from torch import nn
from mimbench.landscape import (filter_normalize, random_direction, adversarial_direction, weight_landscape,
                                classification_loss, input_landscape, input_directions, filter_pca, patch_embed_weight,
                                plot_filters, Landscape)
from mimbench.models import create_vit

@pytest.fixture(scope='module')
def setup():
    torch.manual_seed(0)
    m = create_vit('micro', in_chans=1, patch_size=8).eval()
    x, y = torch.rand(32, 1, 32, 32), torch.randint(0, 10, (32,))
    return m, x, y, classification_loss(x, y)

def test_filter_normalisation(setup):
    m, *_ = setup
    d = random_direction(m, seed=0)
    params = dict(m.named_parameters())
    assert set(d) == {k for k, p in params.items() if p.requires_grad}
    for k, v in d.items():
        p = params[k].detach()
        if p.dim() <= 1: assert v.abs().sum() == 0                                        # biases/norms ignored
        else: assert torch.allclose(v.flatten(1).norm(dim=1), p.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)
    d1 = random_direction(m, seed=0, ignore_1d=False)
    assert torch.allclose(d1['norm.weight'].norm(), params['norm.weight'].norm())
    assert torch.equal(random_direction(m, 3)['head.weight'], random_direction(m, 3)['head.weight'])   # seeded

def test_landscape_centre_and_restoration(setup):
    m, x, y, lf = setup
    before = {k: v.clone() for k, v in m.state_dict().items()}
    d1, d2 = random_direction(m, 0), random_direction(m, 1)
    ls = weight_landscape(m, lf, d1, d2, alphas=torch.linspace(-1, 1, 3), progress=False)
    assert ls.loss.shape == (3, 3)
    with torch.no_grad(): assert abs(ls.loss[1, 1] - lf(m).item()) < 1e-5
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    def boom(model): raise RuntimeError('boom')
    with pytest.raises(RuntimeError): weight_landscape(m, boom, d1, alphas=[0.5], progress=False)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())               # restored after an error
    with pytest.raises(ValueError, match='second direction'): weight_landscape(m, lf, d1, betas=[0.], progress=False)

def test_adversarial_direction_rises_fastest(setup):
    m, x, y, lf = setup
    da = adversarial_direction(m, lf)
    rise = lambda d: (lambda l: (l[1] - l[0]).item())(weight_landscape(m, lf, d, alphas=[0., .01], progress=False).loss)
    assert rise(da) > 0 and all(rise(da) > rise(random_direction(m, s)) for s in range(3))

def test_input_landscape(quick_model, fmnist_test):
    x, y = fmnist_test.get_batch(range(64))
    g, r = input_directions(quick_model, x, y)
    assert set(g.unique().tolist()) <= {-1., 0., 1.} and set(r.unique().tolist()) == {-1., 1.}
    il = input_landscape(quick_model, x, y, eps='8/255', steps=5, progress=False)
    assert il.loss.shape == (5, 5) and il.labels == ('adversarial', 'random')
    with torch.no_grad(): clean = F.cross_entropy(quick_model(x), y).item()
    assert abs(il.loss[2, 2] - clean) < 1e-5
    assert il.loss[-1, 2] > il.loss[2, 2] and il.loss[-1, 2] > il.loss[2, -1]             # adversarial beats random
    one = input_landscape(quick_model, x, y, eps='8/255', norm='l2', steps=5, two_d=False, progress=False)
    assert one.loss.shape == (5,) and one.betas is None
    gl, _ = input_directions(quick_model, x, y, norm='l2')
    assert torch.allclose(gl.flatten(1).norm(dim=1), torch.ones(64))

def test_filter_pca_recovers_a_low_rank_pattern():
    g = torch.Generator().manual_seed(0)
    pats = torch.randn(3, 3, 4, 4, generator=g)
    coef = torch.randn(96, 3, generator=g)
    w = torch.einsum('dk,kcpq->dcpq', coef, pats) + 1e-4 * torch.randn(96, 3, 4, 4, generator=g)
    comps, ratio = filter_pca(w, k=6, standardize=False)
    assert comps.shape == (6, 3, 4, 4)
    assert torch.allclose(comps.flatten(1) @ comps.flatten(1).T, torch.eye(6), atol=1e-5)
    assert ratio[:3].sum() > 0.9999 and (ratio[:-1] >= ratio[1:]).all() and ratio.sum() <= 1 + 1e-6
    # the first three components span the patterns
    P = pats.flatten(1).T
    c = comps[:3].flatten(1).T
    assert torch.allclose(P @ torch.linalg.lstsq(P, c).solution, c, atol=1e-3)
    zs, _ = filter_pca(w * 5 + 3, k=3)                                                       # standardised: scale/shift-free
    z0, _ = filter_pca(w, k=3)
    assert torch.allclose(zs.abs(), z0.abs(), atol=1e-4)

def test_patch_embed_on_models():
    m = create_vit('micro', in_chans=3, patch_size=4)
    assert patch_embed_weight(m).shape == (64, 3, 4, 4)
    tm = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=32, patch_size=4)
    comps, ratio = filter_pca(tm, k=28)
    assert comps.shape == (28, 3, 4, 4) and ratio.shape == (28,)
    import matplotlib; matplotlib.use('Agg')
    assert len(plot_filters(comps).axes) == 28
    with pytest.raises(TypeError, match='patch embedding'): patch_embed_weight(nn.Linear(3, 3))

def test_landscape_plots_put_each_axis_where_it_belongs():
    "The figures show the numbers they are given, with α on the x axis: a transposed grid or swapped axes fails."
    import matplotlib; matplotlib.use('Agg')
    a, b = torch.linspace(-1, 1, 5), torch.linspace(0, 3, 7)                  # different ranges and lengths
    ax = Landscape(a, a ** 2 + a, labels=('adversarial', 'random')).plot(label='x')   # not symmetric in α
    assert ax.lines[0].get_xdata().tolist() == a.tolist() and ax.lines[0].get_ydata().tolist() == (a ** 2 + a).tolist()
    assert ax.get_xlabel() == 'adversarial' and ax.get_legend().get_texts()[0].get_text() == 'x'
    ls = Landscape(a, a[:, None].expand(5, 7).clone(), b, labels=('adversarial', 'random'))   # loss = α, constant in β
    ax = ls.plot(levels=[-0.5, 0.25])
    cs, = [c for c in ax.get_children() if type(c).__name__ == 'QuadContourSet']
    for level, segs in zip(cs.levels, cs.allsegs):                            # a level set of loss = α is the line x = α
        v = torch.tensor(np.concatenate(segs))
        assert torch.allclose(v[:, 0], torch.full_like(v[:, 0], float(level)), atol=1e-9)
        assert v[:, 1].min() < 0.5 and v[:, 1].max() > 2.5                    # running over the whole β range
    assert (ax.get_xlabel(), ax.get_ylabel()) == ('adversarial', 'random')
    ax3 = Landscape(a, a[:, None] + b[None], b).plot(surface=True)
    assert ax3.name == '3d' and ax3.get_zlabel() == 'loss'
    assert -1.3 < ax3.get_xlim()[0] < -1 and 1 < ax3.get_xlim()[1] < 1.3                   # α on x
    assert -0.5 < ax3.get_ylim()[0] < 0 and 3 < ax3.get_ylim()[1] < 3.5                    # β on y
    assert ax3.get_zlim()[0] < -1 + 1e-6 and ax3.get_zlim()[1] > 4 - 1e-6                  # the whole loss range
