"models: the relative position embeddings (iRPE's relaxed index, the bilinear lookup) and RPE as a ViT constructor option."
import math
import pytest, torch
import torch.nn.functional as F
from mimbench.models import (relaxed_index, piecewise_index, rpe_taps, rpe_logits, grid_offsets, create_vit, RPE_ALPHA, RPE_BETA,
                             RPE_GAMMA)

# --- relaxed RPE index ---

def test_relaxed_index_matches_definition():
    a, b, g = RPE_ALPHA, RPE_BETA, RPE_GAMMA
    def ref(x):
        if abs(x) <= a: return x
        return math.copysign(min(b, a + math.log(abs(x) / a) / math.log(g / a) * (b - a)), x)
    pts = [0., .5, -1., 1.9, -1.9, 2., 2.5, -3., 5., 7.6, -10., 15.2, 15.3, 100., -1e4]
    torch.testing.assert_close(relaxed_index(torch.tensor(pts, dtype=torch.float64)),
                               torch.tensor([ref(p) for p in pts], dtype=torch.float64))
    # iRPE's integer index at chosen points
    assert piecewise_index(torch.tensor([0., 1.4, 1.6, 2., 3., 7.6, 15.2, 40., -40.])).tolist() == [0, 1, 2, 2, 2, 3, 3, 3, -3]

def test_relaxed_index_is_continuous_and_monotone():
    x = torch.linspace(-40, 40, 80001, dtype=torch.float64)
    y = relaxed_index(x)
    dy = y.diff()
    assert (dy >= 0).all()
    assert dy.abs().max() <= (x[1] - x[0]) * 1.0001    # Lipschitz 1: no jumps anywhere (α, γ included)
    assert y.abs().max() <= RPE_BETA + 1e-12

def test_bilinear_taps_interpolate_the_relaxed_index():
    "The interpolation weights recover the relaxed index: Σ w·(bucket coordinate) = g̃(offset + δ)."
    K = math.ceil(RPE_BETA); S = 2 * K + 1
    delta = torch.tensor([0.37, -2.6])
    idx, w = rpe_taps(4, delta, cls_token=False)
    dr, dc = grid_offsets(4)
    torch.testing.assert_close((w * (idx // S - K)).sum(0), relaxed_index(dr + delta[0]))
    torch.testing.assert_close((w * (idx % S - K)).sum(0), relaxed_index(dc + delta[1]))

def test_bilinear_lookup_matches_grid_sample():
    "The 4-tap lookup equals torch's bilinear grid_sample (align_corners=True) on the table, at perturbed coordinates."
    torch.manual_seed(0)
    K = math.ceil(RPE_BETA); S = 2 * K + 1; C, g = 3, 5
    table = torch.randn(C, S, S, dtype=torch.float64)
    delta = torch.tensor([1.3, -0.45], dtype=torch.float64)
    idx, w = rpe_taps(g, delta, cls_token=False)
    N = g * g
    basis = torch.eye(C, dtype=torch.float64)[None, :, None, :].expand(1, C, N, C)   # query e_c reads channel c of r_ij
    dr, dc = grid_offsets(g)
    u, v = relaxed_index(dr.double() + delta[0]) + K, relaxed_index(dc.double() + delta[1]) + K
    grid = torch.stack([v / (S - 1) * 2 - 1, u / (S - 1) * 2 - 1], -1)[None]        # x = column, y = row
    ref = F.grid_sample(table[None], grid, mode='bilinear', align_corners=True)[0]
    for lookup_first in (True, False):                                              # both evaluation orders
        ours = rpe_logits(basis, table.flatten(1), (idx, w.double()), lookup_first)[0]   # C×N×N
        torch.testing.assert_close(ours, ref)

def test_rpe_vit_keeps_the_stochastic_depth_schedule():
    rates = lambda m: [getattr(b.drop_path1, 'drop_prob', 0.) for b in m.blocks]
    assert rates(create_vit('micro', 32, 4, 1, drop_path_rate=0.2, rpe=True)) == rates(create_vit('micro', 32, 4, 1, drop_path_rate=0.2))

def test_a_new_classifier_kind_needs_no_edit_elsewhere(tmp_path, monkeypatch):
    "A builder registered with classifier=True is a classifier kind for load_model(expect_kind=CLASSIFIER_KINDS) at once."
    from mimbench.models import MODEL_BUILDERS, CLASSIFIER_KINDS, model_builder, save_model, load_model, CheckpointError
    monkeypatch.setitem(MODEL_BUILDERS, 'tmp-vit', None)            # restored (removed) after the test
    @model_builder('tmp-vit', classifier=True)
    def tmp_vit(**c): return create_vit(**c)
    assert 'tmp-vit' in CLASSIFIER_KINDS and 'tmp-vit' in list(CLASSIFIER_KINDS)
    assert 'mae' not in CLASSIFIER_KINDS and 'adpe-mae' not in CLASSIFIER_KINDS and 'rpe-vit' in CLASSIFIER_KINDS
    v = create_vit('micro', 32, 4, 1); v.config = dict(v.config, kind='tmp-vit')
    save_model(tmp_path / 'm.safetensors', v)
    assert type(load_model(tmp_path / 'm.safetensors', expect_kind=CLASSIFIER_KINDS)[0]).__name__ == 'ViT'
    from mimbench.models import create_mae
    save_model(tmp_path / 'mae.safetensors', create_mae('micro', 32, 4, 1))
    with pytest.raises(CheckpointError, match="holds a 'mae' model, but a .*'tmp-vit'.* fine-tune the pretraining run first"):
        load_model(tmp_path / 'mae.safetensors', expect_kind=CLASSIFIER_KINDS)
