"Registries find what the package defines by themselves: no module-name lists, no import side effects to remember."
import subprocess, sys
from pathlib import Path
import pytest
import mimbench
from mimbench.core import Registry, load_package
from mimbench.mim import PRETEXTS
from mimbench.attacks import ATTACKS

def _py(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)

def test_fresh_process_finds_what_later_modules_register():
    "Fails on the old code: 'pgd-mi' registered only once mimbench.adversarial was imported."
    r = _py("from mimbench.attacks import ATTACKS; print(ATTACKS['pgd-mi'].name)")
    assert r.returncode == 0 and 'pgd_mi' in r.stdout, r.stderr[-2000:]
    r = _py("from mimbench.mim import PRETEXTS; from mimbench.models import MODEL_BUILDERS\n"
            "assert 'mimir' in PRETEXTS and 'adpe-rpe-coord' in list(PRETEXTS)\n"
            "assert 'byol' in MODEL_BUILDERS and 'adpe-mae' in MODEL_BUILDERS")
    assert r.returncode == 0, r.stderr[-2000:]

def test_no_hand_kept_module_lists():
    import mimbench.models, mimbench.train, mimbench.cli
    assert not hasattr(mimbench.models, 'MODEL_KIND_MODULES')
    assert not hasattr(mimbench.train, 'RECIPE_MODULES') and not hasattr(mimbench.train, 'load_recipe_modules')
    assert not hasattr(mimbench.cli, 'CLI_MODULES')

def test_unknown_names_still_answered_with_close_matches():
    with pytest.raises(KeyError, match="Did you mean 'mimir'"): PRETEXTS['mimri']
    assert 'no-such-attack' not in ATTACKS and ATTACKS.get('no-such-attack') is None

@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    "A folder on mimbench's __path__: a module file placed there is a mimbench module, as a new notebook's would be."
    monkeypatch.setattr(mimbench, '__path__', [*mimbench.__path__, str(tmp_path)])
    yield tmp_path
    for f in tmp_path.glob('*.py'): sys.modules.pop(f'mimbench.{f.stem}', None)

def test_lookup_during_import_does_not_recurse(plugin_dir):
    "A module that looks names up while it is being imported (here: by the discovery itself) sees what exists, once."
    (plugin_dir / 'zz_lookup_at_import.py').write_text(
        "from mimbench.mim import PRETEXTS\nfrom mimbench.attacks import ATTACKS\n"
        "SEEN = ('no-such' in PRETEXTS, PRETEXTS.get('nope'), len(list(ATTACKS)) > 0)\n"
        "PRETEXTS['zz-lookup'] = object\n")
    try:
        assert PRETEXTS['zz-lookup'] is object             # the miss imported the new module, which looked up names itself
        assert sys.modules['mimbench.zz_lookup_at_import'].SEEN == (False, None, True)
    finally: dict.pop(PRETEXTS, 'zz-lookup', None)

def test_a_module_that_fails_to_import_is_named(plugin_dir):
    (plugin_dir / 'zz_broken.py').write_text("raise RuntimeError('boom')\n")
    with pytest.raises(KeyError, match=r"Not imported: mimbench\.zz_broken: RuntimeError: boom"):
        ATTACKS['zz-nothing']

def test_registry_made_outside_a_package_discovers_nothing():
    reg = Registry('thing', package=None)
    reg.package = None
    assert reg.load_all() == {} and 'x' not in reg
