"""Execute tutorial notebooks in place, keeping their outputs, and skipping the cells nbdev_test skips by default.

    python tools/run_tutorial.py nbs/tutorials/leaderboard.ipynb [more.ipynb …] [--flags slow gpu]

Tutorials are committed with their outputs (tables and figures rendered from result records) so they can be read on a
repository page. `jupyter nbconvert --execute` would also run the `#| slow` / `#| gpu` cells — a `#| slow` cell that
switches a tutorial to the small scale trains for hours — so this runs each notebook the way `nbdev_test` does: cells
flagged with a tst_flag that is not passed in `--flags` are not executed and keep no output. Run `nbdev_clean` after.
"""
import argparse, re, sys
from pathlib import Path

FLAG = re.compile(r'^\s*#\s*\|\s*(\w+)\s*$', re.M)


def skipped(source:str, flags:set, known:set) -> bool:
    "Whether a code cell carries a tst_flag (one of `known`) that is not enabled in `flags`."
    return any(f in known and f not in flags for f in FLAG.findall(source))


def run(path, flags=(), known=('slow', 'gpu'), timeout:int=1800) -> int:
    "Execute `path` in its folder, in place; returns the number of cells executed."
    import nbformat
    from nbclient import NotebookClient
    path = Path(path); nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}})
    done = 0
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != 'code': continue
            if skipped(cell.source, set(flags), set(known)): cell.outputs, cell.execution_count = [], None; continue
            client.execute_cell(cell, i); done += 1
    nbformat.write(nb, path)
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='+')
    ap.add_argument('--flags', nargs='*', default=[], help='tst_flags whose cells do run (default: none)')
    a = ap.parse_args(argv)
    for nb in a.notebooks: print(f"{nb}: {run(nb, a.flags)} cells executed")
    return 0


if __name__ == '__main__':
    sys.exit(main())
