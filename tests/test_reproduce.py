"""Dry runs of the five papers' grids: paper scale on a CIFAR-10 folder in the real python-batches layout, micro scale on
Fashion-MNIST, and the problems a user can make (missing root, wrong channels, unknown attack) reported clearly."""
import pickle, time
from dataclasses import replace
import numpy as np
import pytest
from mimbench.reproduce import GRIDS, Evaluation, dry_run, cli_reproduce, plan, check_evaluation

PAPERS = ['huang', 'mimir', 'rebuffi', 'nim-de3', 'adpe']

def write_cifar10(root, n=4, seed=0, protocol=4):
    """A cifar-10-batches-py folder laid out as the real one: pickled dicts with b'data' (uint8 N×3072) and b'labels' (list).
    Protocol 4: Python 3 writes bytes under protocol 2 through `_codecs.encode` and numpy arrays under protocol 5 through
    `_frombuffer`, both refused by the restricted unpickler; the original Python 2 bytes are tested with
    `mimbench.data.write_cifar_batch` below."""
    d = root / 'cifar-10-batches-py'; d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
        batch = {b'batch_label': name.encode(), b'labels': [int(v) for v in rng.integers(0, 10, n)],
                 b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b'filenames': [f'img_{i}.png'.encode() for i in range(n)]}
        with open(d / name, 'wb') as f: pickle.dump(batch, f, protocol=protocol)
    (d / 'batches.meta').write_bytes(pickle.dumps({b'label_names': [f'c{i}'.encode() for i in range(10)]}, protocol=protocol))
    return d

@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    write_cifar10(root)
    return root

@pytest.mark.parametrize('paper', PAPERS)
def test_dry_run_paper_scale_cifar10(paper, cifar_root):
    t = time.time()
    problems = dry_run(paper, 'paper', dataset='cifar10', root=str(cifar_root))
    assert problems == [], problems
    print(f"{paper} paper-scale dry run: {time.time() - t:.1f}s")

@pytest.mark.parametrize('paper', PAPERS)
def test_dry_run_micro_fashion_mnist(paper):
    assert dry_run(paper, 'micro', dataset='fashion-mnist') == []

def test_dry_run_python2_batches(tmp_path):
    "The original batches' bytes (Python 2 cPickle, protocol 2) load too."
    from mimbench.data import synthetic_cifar10
    synthetic_cifar10(tmp_path, n=3)
    assert dry_run('nim-de3', 'micro', dataset='cifar10', root=str(tmp_path), forward=False) == []

def test_paper_scale_takes_geometry_from_cifar10(cifar_root):
    p = plan('mimir', 'paper', dataset='cifar10', root=str(cifar_root))
    cfg = p[0].finetune
    assert (cfg.dataset, cfg.channels, cfg.img_size, cfg.preset, cfg.patch_size) == ('cifar10', 3, 32, 'tiny', 2)
    assert all(x.pretrain is None or x.pretrain.channels == 3 for x in p)

def test_missing_root(tmp_path):
    problems = dry_run('mimir', 'paper', dataset='cifar10', root=str(tmp_path / 'missing'), forward=False)
    assert any('cifar10' in p and 'does not exist' in p for p in problems), problems

def test_root_without_batches(tmp_path):
    problems = dry_run('mimir', 'paper', dataset='cifar10', root=str(tmp_path), forward=False)
    assert any('no python batches' in p for p in problems), problems

def test_wrong_channels(cifar_root):
    problems = dry_run('adpe', 'paper', dataset='cifar10', root=str(cifar_root), channels=1, forward=False)
    assert any('RGB images (3 channels)' in p for p in problems), problems

def test_unknown_attack(monkeypatch):
    g = GRIDS['mimir']
    bad = replace(g, evaluations=(*g.evaluations, Evaluation('typo', ('pgdd',), ('8/255',))))
    monkeypatch.setitem(GRIDS, 'mimir', bad)
    problems = dry_run('mimir', 'micro', forward=False)
    assert any("unknown attack 'pgdd'" in p and "'pgd'" in p for p in problems), problems

def test_bad_eps_reported(monkeypatch):
    g = GRIDS['nim-de3']
    bad = replace(g, evaluations=(Evaluation('eps8', ('fgsm',), (8,)),))
    monkeypatch.setitem(GRIDS, 'nim-de3', bad)
    problems = dry_run('nim-de3', 'micro', forward=False)
    assert any('8/255' in p for p in problems), problems

def test_cli_dry_run(cifar_root, capsys):
    cli_reproduce('nim-de3', scale='micro', dry_run=True)
    assert 'dry run: no problems' in capsys.readouterr().out

def test_cli_lists_reproduce():
    from mimbench.cli import find_commands
    assert 'reproduce' in find_commands()


def test_evaluation_without_implementation_fails_dry_run(monkeypatch):
    "An evaluation with nothing to run (no attacks, corruptions or kind) is a dry-run problem, not a silently missing column."
    g = GRIDS['mimir']
    monkeypatch.setitem(GRIDS, 'mimir', replace(g, evaluations=(*g.evaluations, Evaluation('typo', (), ()))))
    problems = dry_run('mimir', 'micro', forward=False)
    assert any('evaluation typo' in p and 'no implementation' in p for p in problems), problems

def test_probe_needs_per_sample_flags(monkeypatch):
    "The linear probe makes a record only if attention.linear_probe can give per-sample flags; else the dry run says so."
    import mimbench.attention as att
    monkeypatch.setattr(att, 'linear_probe', lambda train_feats, train_y, test_feats, test_y: 0.5, raising=False)
    ev = GRIDS['adpe'].evaluation('linear-probe')
    assert any('per_sample' in p for p in check_evaluation(GRIDS['adpe'], ev, []))

@pytest.mark.parametrize('paper', PAPERS)
def test_every_arm_of_a_grid_gets_the_same_finetuning_budget(paper):
    "Equal budgets inside a grid: one label smoothing, lr and batch for every classifier, the same epochs for every "
    "pretrained arm, and a scratch arm gets the pretraining epochs on top. (De³ once lacked the others' label smoothing.)"
    arms = plan(paper, 'small')
    budget = {(p.finetune.recipe_args.get('label_smoothing', 0.), p.finetune.lr, p.finetune.batch_size) for p in arms}
    assert len(budget) == 1, f"{paper}: fine-tuning budgets differ between arms: {budget}"
    pretrained = {p.finetune.epochs for p in arms if p.pretrain is not None}
    assert len(pretrained) == 1, f"{paper}: pretrained arms fine-tune for different epochs: {pretrained}"
    pre_epochs = {p.pretrain.epochs for p in arms if p.pretrain is not None}
    scratch = {p.arm.name: p.finetune.epochs for p in arms if p.pretrain is None}
    (ft_epochs,), (pre,) = pretrained, pre_epochs
    assert all(e == ft_epochs + pre for e in scratch.values()), f"{paper}: scratch arms' epochs {scratch}, expected {ft_epochs + pre}"
