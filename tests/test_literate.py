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

_rt_spec = importlib.util.spec_from_file_location('run_tutorial', ROOT / 'tools' / 'run_tutorial.py')
run_tutorial = importlib.util.module_from_spec(_rt_spec); _rt_spec.loader.exec_module(run_tutorial)

def test_run_tutorial_keeps_outputs_and_skips_flagged_cells(tmp_path):
    "tools/run_tutorial.py executes a tutorial as nbdev_test does: `#| slow` cells (hours at small scale) do not run."
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 21\nprint(x * 2)"),
                                         nbformat.v4.new_code_cell("#| slow\nraise RuntimeError('the slow cell ran')"),
                                         nbformat.v4.new_code_cell("#| export\ny = x + 1\ny")])
    nb.cells[1].outputs = [nbformat.v4.new_output('stream', name='stdout', text='an old output\n')]
    path = tmp_path / 't.ipynb'; nbformat.write(nb, path)
    assert run_tutorial.run(path) == 2
    out = nbformat.read(path, 4).cells
    assert out[0].outputs[0]['text'] == '42\n' and out[1].outputs == [] and out[2].outputs[0]['data']['text/plain'] == '22'
    assert run_tutorial.skipped('#| gpu\nf()', {'slow'}, {'slow', 'gpu'}) and not run_tutorial.skipped('#| slow\nf()', {'slow'}, {'slow', 'gpu'})
