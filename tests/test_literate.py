"Every exported cell of a notebook is followed by an example (issue 14: a notebook reads as why → code → example)."
import importlib.util, json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('cell_stats', ROOT / 'tools' / 'cell_stats.py')
cell_stats = importlib.util.module_from_spec(spec); spec.loader.exec_module(cell_stats)

def _nb(*cells):
    return json.dumps({'cells': [{'cell_type': 'code', 'source': c} for c in cells]})

def test_the_rule_on_toy_notebooks():
    ok = cell_stats.notebook_stats('ok', _nb('#| export\nimport math', '#| export\ndef f(): pass', 'f()'))
    assert (ok['cells'], ok['back_to_back'], ok['missing']) == (2, 1, [])          # an import cell may precede code
    bad = cell_stats.notebook_stats('bad', _nb('#| export\ndef f(): pass\ndef g(): pass', '#| export\ndef h(): pass'))
    assert (bad['multi'], len(bad['missing'])) == (1, 2)                          # two cells, neither has an example

def test_every_export_cell_has_an_example():
    missing = cell_stats.totals(cell_stats.notebooks_in(ROOT))['missing']
    assert not missing, "export cells with no example after them:\n" + '\n'.join(missing)
