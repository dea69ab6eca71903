"Checkpoints of kind 'adpe-mae' and 'rpe-vit' written by the code before RPE became a block option of `models` load and compute what they computed then."
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from mimbench.models import load_model, CLASSIFIER_KINDS
import mimbench.adpe  # registers 'adpe-mae'

HERE = Path(__file__).parent / 'legacy_adpe'
# Written by the pre-split code (`adpe.create_adpe_mae`/`create_rpe_vit`, commit 319eeb9): tiny models (dim 16, depth 2,
# 16×16 images, patch 4) with random RPE tables and adversaries, and their outputs on fixed inputs.
CASES = ['rpe-coord', 'rpe-emb', 'rpe-plain', 'ape-coord', 'ape-emb-mae']
EXP = load_file(str(HERE / 'expected.safetensors'))

@pytest.fixture(autouse=True)
def one_thread():
    "The expected values were computed on one CPU thread; bit-for-bit equality needs the same reduction order."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.mark.parametrize('name', CASES)
def test_old_adpe_checkpoint_computes_the_same(name):
    m, meta = load_model(HERE / f'{name}.safetensors')
    assert meta['config']['kind'] == 'adpe-mae'
    x, noise = EXP['x'], EXP['noise']
    with torch.no_grad(): l, p, _ = m.eval()(x, noise=noise)
    assert torch.equal(p, EXP[f'{name}/eval/pred']) and torch.equal(l, EXP[f'{name}/eval/loss'])
    m.train()                                          # the adversary path: perturbed positions, then one ascent step each
    l, p, _ = m(x, noise=noise)
    assert torch.equal(p.detach(), EXP[f'{name}/train/pred']) and torch.equal(l.detach(), EXP[f'{name}/train/loss'])
    l.backward()
    assert torch.equal(m.encoder.patch_embed.proj.weight.grad, EXP[f'{name}/train/grad_patch'])
    for i, a in enumerate(m.adversaries()): assert torch.equal(a.delta, EXP[f'{name}/train/delta{i}']), i
    if f'{name}/crop/pred' in EXP:                     # half-size crops (another grid), as MAE+ trains
        l, p, _ = m(EXP['xc'], noise=EXP['noise_c'])
        torch.testing.assert_close(p.detach(), EXP[f'{name}/crop/pred'], rtol=0, atol=0)

@pytest.mark.parametrize('name', CASES)
def test_old_classifier_checkpoint_computes_the_same(name):
    "Classifiers exported from those models — kind 'rpe-vit' for RPE — load as (RPE) ViTs with the same logits."
    clf, meta = load_model(HERE / f'{name}-clf.safetensors', expect_kind=CLASSIFIER_KINDS)
    assert meta['config']['kind'] == ('rpe-vit' if name.startswith('rpe') else 'vit')
    assert (type(clf.blocks[0]).__name__ == 'RPEBlock') == name.startswith('rpe')
    with torch.no_grad(): assert torch.equal(clf(EXP['x']), EXP[f'{name}/clf/logits'])
