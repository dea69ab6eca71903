"The CLI: options generated from TrainConfig, commands found without importing heavy modules, a command per module."
import dataclasses, json, os, subprocess, sys, time
from pathlib import Path
import pytest
from mimbench.train import TrainConfig
from mimbench.cli import (main, find_commands, train_options_markdown, command_parser, finetune, dashes_to_underscores, info_text,
                          static_registrations, INFO_KINDS)

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
ROOT = Path(__file__).parent.parent

def _help(*cmd):
    r = subprocess.run([str(BIN / 'mimbench'), *cmd, '--help'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    return ' '.join(r.stdout.split())

def _flag(f):
    if f.type == 'bool': return f"--no_{f.name}" if f.default else f"--{f.name}"
    return f"--{f.name}"

@pytest.mark.parametrize('cmd', ['pretrain', 'finetune'])
def test_every_train_config_field_is_an_option(cmd):
    "Fails on the old code: finetune had no --drop_path / --global_pool, pretrain no --init, neither --betas or --min_lr."
    h = _help(cmd)
    for f in dataclasses.fields(TrainConfig):
        if f.name == 'task': assert f'(task: {cmd})' in h
        else: assert f"{_flag(f)} " in h, f.name
    assert '--args DICT' in h and '--n_train INT' in h

def test_lr_sweep_options_are_the_fields_it_does_not_set_itself():
    h = _help('lr-sweep')
    for f in dataclasses.fields(TrainConfig):
        if f.name not in ('task', 'layer_decay', 'eval_split'): assert f"{_flag(f)} " in h, f.name
    assert '--layer_decay' not in h and '--decays' in h

def test_values_reach_the_runs_config(tmp_path):
    "--drop-path, --global-pool, --betas, --args, --no-amp, --layer-decay none given on the command line are the run's settings."
    rc = main(['finetune', '--drop-path', '0.1', '--global-pool', 'avg', '--betas', '0.9,0.99', '--args', '{"label_smoothing": 0.1}',
               '--no-amp', '--layer-decay', 'none', '--n_train', '128', '--batch-size', '64', '--n-eval', '20', '--no-progress',
               '--out', str(tmp_path)])
    assert rc == 0
    (d,) = tmp_path.iterdir()
    c = json.loads((d / 'config.json').read_text())
    assert (c['drop_path'], c['global_pool'], c['betas'], c['recipe_args'], c['amp'], c['layer_decay'], c['n_train']) == \
           (0.1, 'avg', [0.9, 0.99], {'label_smoothing': 0.1}, False, None, 128)
    from mimbench.models import load_model
    m = load_model(d / 'model.safetensors')[0]
    assert m.global_pool == 'avg' and m.config['drop_path_rate'] == 0.1

def test_both_spellings_and_bad_values():
    p = command_parser(finetune)
    for argv in (['--n-train', '5'], ['--n_train', '5'], ['--n-train=5']):
        assert p.parse_args([dashes_to_underscores(a) for a in argv]).n_train == 5
    assert p.parse_args(['--recipe_args', '{"a": 1}']).recipe_args == {'a': 1}        # the field's own name works too
    with pytest.raises(SystemExit): p.parse_args(['--betas', 'x,y'])
    with pytest.raises(SystemExit): p.parse_args(['--args', '{not json'])

def test_bad_json_is_one_line(tmp_path):
    r = subprocess.run([str(BIN / 'mimbench'), 'pretrain', '--args', '{oops', '--out', str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and 'must be JSON' in r.stderr and 'Traceback' not in r.stderr

def timed_main(argv):
    "Run `mimbench.cli.main(argv)` in a fresh process: (completed process, seconds, heavy modules it imported)."
    code = ("import sys, time; t = time.perf_counter(); from mimbench.cli import main; "
            f"main({argv!r}); "
            "print(round(time.perf_counter() - t, 3), [m for m in ('torch', 'ipywidgets', 'matplotlib', 'timm') if m in sys.modules])")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    secs, heavy = r.stdout.strip().splitlines()[-1].split(' ', 1)
    return r, secs, heavy

def test_help_imports_nothing_heavy():
    "Fails on the old code: `mimbench --help` imported every module, ipywidgets and matplotlib included (4–9 s)."
    r, secs, heavy = timed_main(['--help'])
    assert heavy == '[]', heavy
    assert 'lr-sweep' in r.stdout and 'eval' in r.stdout and 'export-encoder' in r.stdout
    assert float(secs) < 2, secs                           # ~0.1–0.3 s here; generous for a loaded machine

def test_readme_lists_every_training_option():
    "The README's option table is generated (`mimbench.cli.train_options_markdown`); regenerate it when TrainConfig changes."
    assert train_options_markdown() in (ROOT / 'README.md').read_text(), \
        "README.md's training-option table is out of date: paste the output of python -c 'from mimbench.cli import train_options_markdown as t; print(t())'"

PLUGIN = '''
from mimbench.mim import PRETEXTS, MAEPretext
from mimbench.attacks import ATTACKS, AttackSpec, pgd

@PRETEXTS.register('zz-mae')
class ZZMAE(MAEPretext):
    "An MAE with a 50 % mask, added by one module."
    def __init__(self, mask_ratio=0.5, **kw): super().__init__(mask_ratio, **kw)

ATTACKS['zz-pgd'] = AttackSpec(pgd, defaults={'steps': 2})

def cli_zz_hello(name:str='world'):  # who to greet
    "Say hello (a command contributed by a new module)."
    print(f"hello {name}")
'''

def test_one_new_module_adds_a_pretext_an_attack_and_a_command(tmp_path, monkeypatch, capsys):
    "A module file found where the package's modules are is all it takes: no list to edit, no import to remember."
    import mimbench
    from mimbench.mim import PRETEXTS
    from mimbench.attacks import ATTACKS
    from mimbench.train import train
    (tmp_path / 'zz_plugin.py').write_text(PLUGIN)
    monkeypatch.setattr(mimbench, '__path__', [*mimbench.__path__, str(tmp_path / 'pkg')])
    (tmp_path / 'pkg').mkdir(); (tmp_path / 'zz_plugin.py').rename(tmp_path / 'pkg' / 'zz_plugin.py')
    try:
        assert 'zz-hello' in find_commands()
        assert main(['--help']) == 0 and 'Say hello' in capsys.readouterr().out
        assert main(['zz-hello', '--name', 'mim']) == 0 and 'hello mim' in capsys.readouterr().out
        assert PRETEXTS['zz-mae']().mask_ratio == 0.5 and ATTACKS['zz-pgd'].defaults == {'steps': 2}
        assert 'zz-mae' in info_text(str(tmp_path / 'none')) and 'zz-pgd' in info_text(str(tmp_path / 'none'))   # read from source
        run = train(TrainConfig(recipe='zz-mae', n_train=64, batch_size=64, out=str(tmp_path / 'runs'), progress=False))
        assert run.result['steps'] == 1 and 'mimbench.zz_plugin' in json.loads((run.dir / 'config.json').read_text())['code']['modules']
    finally:
        dict.pop(PRETEXTS, 'zz-mae', None); dict.pop(ATTACKS, 'zz-pgd', None); sys.modules.pop('mimbench.zz_plugin', None)


def test_info_imports_nothing_heavy(tmp_path):
    "Fails on the old code: `mimbench info` asked the registries, which imported every module (torch, timm, ipywidgets, matplotlib; ~4 s); with runs in the folder its stale check imported mimbench.train, hence torch (7.7 s for 121 runs)."
    run = tmp_path / 'runs' / 'pretrain-mae-fashion-mnist-micro-0123456789'; run.mkdir(parents=True)
    (run / 'config.json').write_text('{"code": {"version": "0.1.0", "digest": "x", "modules": {"mimbench.train": "old"}}}')
    (run / 'result.json').write_text('{"steps": 1}')
    r, secs, heavy = timed_main(['info', '--out', str(tmp_path / 'runs')])
    assert heavy == '[]', heavy
    assert 'pgd-mi' in r.stdout and 'mimir' in r.stdout and 'dim 64, depth 4, heads 4' in r.stdout
    assert f"{run.name}: {{'steps': 1}}" in r.stdout and 'STALE, made by other code: mimbench.train changed' in r.stdout
    assert float(secs) < 2, secs                           # ~0.3 s here; generous for a loaded machine

def test_info_lists_exactly_what_the_registries_hold():
    "What `info` reads from source is what the live registries hold once every module is imported: it leaves nothing out."
    from mimbench.core import Registry, load_package
    assert load_package('mimbench') == {}
    live = {v.kind: set(dict.keys(v)) for n, m in list(sys.modules.items()) if n.startswith('mimbench.')
            for v in vars(m).values() if isinstance(v, Registry) and v.kind in INFO_KINDS}
    st = static_registrations()
    assert set(live) == set(INFO_KINDS)
    for k in INFO_KINDS: assert set(st[k]) == live[k], k

BUGGY = '''
def cli_zz_bug():
    "A command with a bug: a dict lookup that misses."
    return {}['missing']

def cli_zz_type_bug(n:int=2):
    "A command with a bug: a wrong type inside."
    return len(n)

def cli_zz_unpack_bug():
    "A command with a bug: a ValueError raised by the interpreter, not by us."
    a, b = (1, 2, 3)

def cli_zz_bad_value(n:int=-1):
    "A command that checks its value."
    if n < 0: raise ValueError(f"n must be ≥ 0, got {n}.")

def cli_zz_unknown(attack:str='pgdd'):
    "A command that looks a name up in a registry."
    from mimbench.attacks import ATTACKS
    return ATTACKS[attack]
'''

@pytest.fixture
def buggy_commands(tmp_path, monkeypatch):
    import mimbench
    (tmp_path / 'zz_buggy.py').write_text(BUGGY)
    monkeypatch.setattr(mimbench, '__path__', [*mimbench.__path__, str(tmp_path)])
    yield
    sys.modules.pop('mimbench.zz_buggy', None)

@pytest.mark.parametrize('cmd, exc', [('zz-bug', KeyError), ('zz-type-bug', TypeError), ('zz-unpack-bug', ValueError)])
def test_a_bug_keeps_its_traceback(buggy_commands, cmd, exc, monkeypatch):
    "Fails on the old code: USER_ERRORS caught every KeyError/TypeError/ValueError and printed one line as if the user erred."
    monkeypatch.delenv('MIMBENCH_DEBUG', raising=False)
    with pytest.raises(exc): main([cmd])

@pytest.mark.parametrize('cmd, msg', [('zz-bad-value', 'n must be ≥ 0, got -1.'), ('zz-unknown', "Unknown attack 'pgdd'. Did you mean")])
def test_a_users_mistake_is_one_line(buggy_commands, cmd, msg, capsys, monkeypatch):
    monkeypatch.delenv('MIMBENCH_DEBUG', raising=False)
    assert main([cmd]) == 1
    err = capsys.readouterr().err
    assert f"mimbench {cmd}: error: {msg}" in err and 'Traceback' not in err

def test_user_errors_of_real_commands_are_one_line(tmp_path):
    "A missing run and a bad ε through the console script: one line, exit 1; with MIMBENCH_DEBUG=1 the traceback."
    for argv in (['eval', str(tmp_path / 'no-run')], ['sweep', str(tmp_path / 'a'), str(tmp_path / 'b')]):
        r = subprocess.run([str(BIN / 'mimbench'), *argv], capture_output=True, text=True, env=ENV)
        assert r.returncode == 1 and 'error:' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    r = subprocess.run([str(BIN / 'mimbench'), 'eval', str(tmp_path / 'no-run')], capture_output=True, text=True,
                       env={**ENV, 'MIMBENCH_DEBUG': '1'})
    assert r.returncode == 1 and 'Traceback' in r.stderr

def test_demo_pipeline_end_to_end(tmp_path):
    "`mimbench demo`'s pipeline on 256 training images, one epoch each: both runs, the figures and demo.json, the full test set."
    from mimbench.cli import run_demo
    s = run_demo(tmp_path, 1, 1, n_train=256, progress=False)
    assert s['test_images'] == 10_000 and 0 <= s['test_accuracy'] <= 1
    assert Path(s['pretrain_run']).parent == tmp_path and Path(s['finetune_run']).parent == tmp_path
    assert Path(s['reconstructions']).stat().st_size > 0 and Path(s['training_curves']).stat().st_size > 0
    assert json.loads((Path(s['finetune_run']) / 'demo.json').read_text()) == s
