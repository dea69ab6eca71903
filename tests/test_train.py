"Trainer: exact resume after SIGKILL, data-parallel runs under torchrun, checkpoints that refuse bad files."
import dataclasses, json, os, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from mimbench.models import CheckpointError, create_mae, create_vit, load_model, save_model
from mimbench.train import TrainConfig, train, run_dir, read_metrics

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}

def _cli(*args):
    return [str(BIN / 'mimbench'), *map(str, args)]

PRETRAIN = ('pretrain', '--n-train', 1024, '--batch-size', 64, '--epochs', 3, '--ckpt-every', 5, '--lr', 1e-3,
            '--augment', 'mae', '--no-progress')

def _weights(d):
    return load_file(str(Path(d) / 'model.safetensors'))

def _strip_time(recs):
    return [{k: v for k, v in r.items() if k != 'time'} for r in recs]

def test_exact_resume_after_sigkill(tmp_path):
    "A run killed with SIGKILL mid-epoch and restarted with the same command ends with bit-identical weights."
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    subprocess.run(_cli(*PRETRAIN, '--out', ref), check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(_cli(*PRETRAIN, '--out', cut), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(cut.glob('*/checkpoint.safetensors')) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL); proc.wait()
    (run,) = list(cut.iterdir())
    assert not (run / 'result.json').exists(), 'the run finished before it could be killed; make it longer'
    subprocess.run(_cli(*PRETRAIN, '--out', cut), check=True, env=ENV, capture_output=True)
    a, b = _weights(next(ref.iterdir())), _weights(run)
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    assert _strip_time(read_metrics(next(ref.iterdir()))) == _strip_time(read_metrics(run))
    assert not list(run.glob('.*.tmp')), 'stale temporary files left in the run directory'

def test_resume_continues_from_checkpoint(tmp_path):
    "Resuming does not start over: the first logged step after a restart follows the checkpoint."
    cfg = TrainConfig(n_train=256, batch_size=64, epochs=2, lr=1e-3, out=str(tmp_path), progress=False, log_every=1)
    d = run_dir(cfg)
    full = train(cfg)
    (d / 'result.json').unlink(); (d / 'model.safetensors').unlink()
    # pretend the run died after epoch 1: rewind the checkpoint to the end of epoch 1
    cfg1 = TrainConfig(**{**cfg.__dict__, 'epochs': 1, 'out': str(tmp_path / 'one')})
    train(cfg1)
    import shutil
    shutil.copy(run_dir(cfg1) / 'checkpoint.safetensors', d / 'checkpoint.safetensors')
    again = train(cfg)
    assert again.result['steps'] == 8
    steps = [r['step'] for r in read_metrics(d) if not r.get('epoch_end')]
    assert steps == list(range(1, 9)), steps   # truncated and re-logged, not duplicated

def _free_port() -> int:
    "A TCP port nothing listens on now (a fixed or pid-derived port can collide with another run on the machine)."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_ddp_two_processes_matches_single_process(tmp_path):
    "torchrun with 2 gloo processes gives the same weights as one process with the same global batch."
    args = ('finetune', '--n-train', 512, '--batch-size', 64, '--epochs', 1, '--augment', 'none', '--n-eval', 200,
            '--lr', 1e-3, '--no-progress')
    subprocess.run(_cli(*args, '--out', tmp_path / 'one'), check=True, env=ENV, capture_output=True)
    r = subprocess.run([str(BIN / 'torchrun'), '--nproc_per_node', '2', '--master_port', str(_free_port()),
                        str(BIN / 'mimbench'), *map(str, args), '--out', str(tmp_path / 'two')],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = next((tmp_path / 'one').iterdir()), next((tmp_path / 'two').iterdir())
    assert one.name == two.name                 # same config, same run identity
    a, b = _weights(one), _weights(two)
    # The key bias of attention has an exactly-zero true gradient (softmax ignores a per-row constant), so Adam
    # amplifies rounding noise there into lr-sized steps; every other tensor must agree to float tolerance.
    for k in a:
        if not k.endswith('attn.qkv.bias'): torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=2e-4, msg=k)
    from mimbench.data import get_dataset
    x, _ = get_dataset('fashion-mnist', 'test', channels=1).get_batch(torch.arange(200))
    m1, m2 = load_model(one / 'model.safetensors')[0], load_model(two / 'model.safetensors')[0]
    with torch.no_grad(): torch.testing.assert_close(m1(x), m2(x), rtol=1e-3, atol=1e-3)
    ra, rb = json.loads((one / 'result.json').read_text()), json.loads((two / 'result.json').read_text())
    assert abs(ra['test_acc'] - rb['test_acc']) <= 0.02
    assert len([r for r in read_metrics(two) if r.get('epoch_end')]) == 1   # rank 0 alone writes

def test_cli_pretrain_then_finetune(tmp_path):
    r = subprocess.run(_cli('pretrain', '--dataset', 'fashion-mnist', '--preset', 'micro', '--epochs', 1, '--n-train', 512,
                            '--no-progress', '--out', tmp_path), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pre = next(tmp_path.iterdir())
    assert (pre / 'model.safetensors').exists() and 'run directory' in r.stdout
    r = subprocess.run(_cli('finetune', '--init', pre, '--epochs', 1, '--n-train', 512, '--n-eval', 200, '--no-progress',
                            '--out', tmp_path), env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'test_acc' in r.stdout
    r = subprocess.run(_cli('info', '--out', tmp_path), env=ENV, capture_output=True, text=True)
    assert 'fashion-mnist' in r.stdout and pre.name in r.stdout

def test_cli_help_and_unknown_command():
    r = subprocess.run(_cli('--help'), capture_output=True, text=True)
    assert r.returncode == 0 and 'pretrain' in r.stdout and 'demo' in r.stdout
    r = subprocess.run(_cli('pretrian'), capture_output=True, text=True)
    assert r.returncode == 2 and "Did you mean 'pretrain'" in r.stderr
    r = subprocess.run(_cli('pretrain', '--help'), capture_output=True, text=True)
    assert r.returncode == 0 and '--mask_ratio' in r.stdout

# --- bad input: each a clear message, nothing half-written ---

@pytest.mark.parametrize('flag, value, says', [('--epochs', 0, 'epochs must be an integer ≥ 1'),
                                               ('--batch-size', 0, 'batch_size must be'), ('--img-size', 0, 'img_size must be'),
                                               ('--device', 'cuda:99', 'CUDA GPU(s) are visible')])
def test_cli_bad_settings_one_line_and_no_run(tmp_path, flag, value, says):
    r = subprocess.run(_cli('pretrain', flag, value, '--out', tmp_path), env=ENV, capture_output=True, text=True)
    assert r.returncode == 1 and says in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not any(tmp_path.iterdir())                 # refused before a run directory was made

def test_unknown_recipe_and_preset_messages(tmp_path):
    with pytest.raises(KeyError, match="Did you mean 'mae'"):
        train(TrainConfig(recipe='mea', out=str(tmp_path), progress=False))
    with pytest.raises(KeyError, match='Unknown model preset'):
        train(TrainConfig(preset='huge', out=str(tmp_path), progress=False))
    with pytest.raises(ValueError, match='does not divide'):
        train(TrainConfig(patch_size=5, out=str(tmp_path), progress=False))
    assert not any((tmp_path).glob('*/checkpoint.safetensors'))

def test_truncated_checkpoint_is_reported(tmp_path):
    cfg = TrainConfig(n_train=128, batch_size=64, epochs=1, out=str(tmp_path), progress=False)
    run = train(cfg)
    (run.dir / 'result.json').unlink()
    ck = run.dir / 'checkpoint.safetensors'
    ck.write_bytes(ck.read_bytes()[:200])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        train(cfg)

def test_checkpoint_of_other_architecture_is_refused(tmp_path):
    cfg = TrainConfig(n_train=128, batch_size=64, epochs=1, out=str(tmp_path), progress=False)
    d = run_dir(cfg); d.mkdir(parents=True)
    from mimbench.train import save_checkpoint
    other = create_mae('micro', in_chans=3)
    save_checkpoint(d / 'checkpoint.safetensors', other, torch.optim.AdamW(other.parameters()), 1, cfg)
    with pytest.raises(CheckpointError, match='different model'):
        train(cfg)

def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / 'foreign.safetensors'
    save_file({'w': torch.zeros(2)}, str(p))
    with pytest.raises(CheckpointError, match='not written by mimbench'):
        load_model(p)
    with pytest.raises(FileNotFoundError, match='No checkpoint'):
        load_model(tmp_path / 'missing.safetensors')

def test_finetune_init_from_unfinished_run(tmp_path):
    d = tmp_path / 'unfinished'; d.mkdir()
    with pytest.raises(FileNotFoundError, match='is the run finished'):
        train(TrainConfig(task='finetune', recipe='ce', init=str(d), out=str(tmp_path), progress=False))

def test_bad_images_for_models():
    vit = create_vit('micro', in_chans=3)
    from mimbench.core import ImageError
    with pytest.raises(ImageError, match='divide by 255'): vit(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ImageError, match='channel'): vit(torch.rand(2, 1, 32, 32))
    with pytest.raises(ImageError, match='32×32'): vit(torch.rand(2, 3, 28, 28))
    with pytest.raises(ImageError, match='N×C×H×W'): vit(torch.rand(3, 32, 32))

# --- run identity: a starting run by its hash, and the code that made a run ---

def _tiny(tmp_path, **kw):
    return TrainConfig(**{'n_train': 64, 'batch_size': 64, 'epochs': 1, 'out': str(tmp_path / 'runs'), 'progress': False, **kw})

@pytest.mark.xfail(strict=True, reason=(
    "Known bug, kept visible: run_hash keys `init` by the run (init_key) but hashes run paths inside recipe_args as "
    "written, so De³'s fine-tune (recipe_args.denoiser = the NIM run's path) gets another hash under another run folder. "
    "The leaderboard and reproduce match records by leaderboard.run_key, which names such runs without the hash, so "
    "their records still count (tests/test_reproduce_run.py). The fix is in train.py, inside the record digest: it "
    "lands with the next digest change, when every record is re-made (tools/compare_records.py)."))
def test_run_hash_does_not_depend_on_the_run_folder():
    from mimbench.leaderboard import plan_jobs
    from mimbench.train import run_hash
    de3 = lambda out: next(j for j in plan_jobs('small', ['randomized'], ['de3'], out, seeds=[0]))
    a, b = de3('runs'), de3('/elsewhere/runs')
    assert run_hash(a.pretrain) == run_hash(b.pretrain)                   # holds: no path in a pretraining's config
    assert run_hash(a.finetune) == run_hash(b.finetune)                   # fails today: the denoiser's path is hashed

def test_finetune_from_a_run_is_keyed_by_the_run_not_its_path(tmp_path, monkeypatch):
    "Fails on the old code: the path string of --init was hashed, so ./runs/x, the absolute path or ../runs/x from another folder missed the cache."
    pre = train(_tiny(tmp_path))
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(pre.dir)
    ft = lambda init: _tiny(tmp_path, task='finetune', recipe='ce', init=init, n_eval=20)
    first = train(ft(rel))
    (tmp_path / 'elsewhere').mkdir(); monkeypatch.chdir(tmp_path / 'elsewhere')
    for init in (str(pre.dir.resolve()), os.path.join('..', rel), os.path.join('..', rel) + '/', str(pre.dir / 'model.safetensors')):
        assert run_dir(ft(init)) == first.dir, init
    again = train(ft(os.path.join('..', rel)))
    assert again.dir == first.dir and again.result == first.result          # cached, not trained again
    assert len(list((tmp_path / 'runs').iterdir())) == 2

def _pretend_other_code(d, module='mimbench.models'):
    c = json.loads((d / 'config.json').read_text())
    c['code']['modules'][module] = 'digest-of-older-code'
    (d / 'config.json').write_text(json.dumps(c))

def test_run_of_other_code_is_stale_and_not_silently_reused(tmp_path):
    "Fails on the old code: the code was not recorded, and a run trained before a fix came back from the cache after it."
    from mimbench.train import StaleRunError, stale_reasons
    from mimbench.cli import info_text
    cfg = _tiny(tmp_path)
    run = train(cfg)
    code = json.loads((run.dir / 'config.json').read_text())['code']
    assert {'mimbench.train', 'mimbench.models', 'mimbench.core'} <= set(code['modules']) and code['version']
    assert stale_reasons(run.dir) == [] and 'STALE' not in info_text(cfg.out)
    _pretend_other_code(run.dir)
    assert stale_reasons(run.dir) == ['mimbench.models changed']
    assert 'STALE, made by other code: mimbench.models changed' in info_text(cfg.out)
    with pytest.raises(StaleRunError, match='made by other code'): train(cfg, stale='refuse')
    assert train(cfg, stale='allow').result == run.result                   # reused only when asked for
    with pytest.warns(UserWarning, match='training it again'): again = train(cfg)   # default: train again, keep the old aside
    assert again.dir == run.dir and stale_reasons(again.dir) == []
    (aside,) = [p for p in (tmp_path / 'runs').iterdir() if '.stale-' in p.name]
    assert (aside / 'model.safetensors').exists() and stale_reasons(aside) == ['mimbench.models changed']

def test_run_from_before_code_versions_is_stale_until_adopted(tmp_path):
    from mimbench.train import stale_reasons
    from mimbench.cli import main
    run = train(_tiny(tmp_path))
    c = json.loads((run.dir / 'config.json').read_text()); code = c.pop('code')
    (run.dir / 'config.json').write_text(json.dumps(c))
    assert 'no code version recorded' in stale_reasons(run.dir)[0]
    assert main(['adopt', str(run.dir)]) == 0                                  # the user vouches for it
    assert stale_reasons(run.dir) == [] and json.loads((run.dir / 'config.json').read_text())['code'] == code
    assert train(_tiny(tmp_path)).result == run.result

def test_finetune_on_a_retrained_pretraining_is_stale(tmp_path):
    from mimbench.train import stale_reasons
    pre_cfg = _tiny(tmp_path)
    pre = train(pre_cfg)
    ft_cfg = _tiny(tmp_path, task='finetune', recipe='ce', init=str(pre.dir), n_eval=20)
    ft = train(ft_cfg)
    _pretend_other_code(pre.dir)
    assert 'its starting run' in stale_reasons(ft.dir)[0] and 'is stale' in stale_reasons(ft.dir)[0]
    assert stale_reasons(ft.dir, deep=False) == [] and train(ft_cfg).result == ft.result   # not retrained again and again
    with pytest.warns(UserWarning, match='Starting from .* made by other code'): train(dataclasses.replace(ft_cfg, seed=1))
    with pytest.warns(UserWarning): train(pre_cfg)                           # the pretraining is trained again …
    assert 'was trained again since' in stale_reasons(ft.dir)[0]            # … so what was built on it is stale too

def test_cli_stale_choices(tmp_path):
    from mimbench.cli import main
    args = ['pretrain', '--n-train', '64', '--batch-size', '64', '--no-progress', '--out', str(tmp_path)]
    assert main(args) == 0
    (d,) = tmp_path.iterdir()
    _pretend_other_code(d)
    assert main(args + ['--stale', 'refuse']) == 1                          # one-line error, nothing touched
    assert main(args + ['--allow-stale']) == 0 and len(list(tmp_path.iterdir())) == 1
