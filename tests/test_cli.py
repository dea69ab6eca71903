"The CLI: options generated from TrainConfig, commands found without importing heavy modules, a command per module."
import dataclasses, json, os, subprocess, sys, time
from pathlib import Path
import pytest
from mimbench.train import TrainConfig
from mimbench.cli import main, find_commands, train_options_markdown, command_parser, finetune, dashes_to_underscores

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

def test_help_imports_nothing_heavy():
    "Fails on the old code: `mimbench --help` imported every module, ipywidgets and matplotlib included (4–9 s)."
    code = ("import sys, time; t = time.perf_counter(); from mimbench.cli import main; main(['--help']); "
            "print(round(time.perf_counter() - t, 3), [m for m in ('torch', 'ipywidgets', 'matplotlib', 'timm') if m in sys.modules])")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    secs, heavy = r.stdout.strip().splitlines()[-1].split(' ', 1)
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
        run = train(TrainConfig(recipe='zz-mae', n_train=64, batch_size=64, out=str(tmp_path / 'runs'), progress=False))
        assert run.result['steps'] == 1 and 'mimbench.zz_plugin' in json.loads((run.dir / 'config.json').read_text())['code']['modules']
    finally:
        dict.pop(PRETEXTS, 'zz-mae', None); dict.pop(ATTACKS, 'zz-pgd', None); sys.modules.pop('mimbench.zz_plugin', None)
