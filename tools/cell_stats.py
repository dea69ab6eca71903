"""Literate-programming statistics of the notebooks: export cells, their mean length, cells holding more than one
top-level definition, and the export cells not followed by an example (the next code cell is another export cell).

    python tools/cell_stats.py            # the working tree
    python tools/cell_stats.py cae59e8    # a commit
"""
import ast, glob, json, subprocess, sys

def is_export(src:str) -> bool: return src.lstrip().startswith('#| export')

def only_imports(src:str) -> bool:
    try: body = ast.parse(src).body
    except SyntaxError: return False
    return bool(body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)

def definitions(src:str) -> int:
    try: return sum(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) for n in ast.parse(src).body)
    except SyntaxError: return 0

def notebook_stats(name:str, text:str) -> dict:
    "Counts for one notebook's JSON `text`; `missing`: export cells (not import-only) with no example after them."
    cells = [''.join(c['source']) for c in json.loads(text)['cells'] if c['cell_type'] == 'code']
    out = {'cells': 0, 'lines': 0, 'multi': 0, 'back_to_back': 0, 'missing': []}
    for i, src in enumerate(cells):
        if not is_export(src): continue
        out['cells'] += 1; out['lines'] += len(src.splitlines()) - 1
        out['multi'] += definitions(src) > 1
        followed = i + 1 < len(cells) and is_export(cells[i + 1])
        out['back_to_back'] += followed
        if (followed or i + 1 == len(cells)) and not only_imports(src): out['missing'].append(f"{name}: {src.splitlines()[1][:90] if len(src.splitlines()) > 1 else ''}")
    return out

def notebooks_in(root='.') -> dict:
    "{path: JSON text} of `root`/nbs/*.ipynb."
    return {p: open(p).read() for p in sorted(glob.glob(f'{root}/nbs/*.ipynb'))}

def notebooks(rev=None) -> dict:
    "{path: JSON text} of nbs/*.ipynb in the working tree or at commit `rev`."
    if rev is None: return notebooks_in('.')
    files = subprocess.run(['git', 'ls-tree', '--name-only', rev, 'nbs/'], capture_output=True, text=True, check=True).stdout.split()
    return {f: subprocess.run(['git', 'show', f'{rev}:{f}'], capture_output=True, text=True, check=True).stdout
            for f in files if f.endswith('.ipynb')}

def totals(nbs:dict) -> dict:
    per = [notebook_stats(k, v) for k, v in nbs.items()]
    t = {k: sum(p[k] for p in per) for k in ('cells', 'lines', 'multi', 'back_to_back')}
    return {**t, 'mean_lines': t['lines'] / max(t['cells'], 1), 'missing': [m for p in per for m in p['missing']]}

if __name__ == '__main__':
    t = totals(notebooks(sys.argv[1] if len(sys.argv) > 1 else None))
    print(f"export cells {t['cells']}, mean lines {t['mean_lines']:.1f}, >1 definition {t['multi']}, "
          f"followed by another export cell {t['back_to_back']}, without an example after them {len(t['missing'])}")
    for m in t['missing']: print('  ', m)
