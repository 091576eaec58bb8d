#!/usr/bin/python3
"""Execute the notebooks in the Deno Jupyter kernel, headless, and store their outputs.

    /usr/bin/python3 notebooks/support/run.py [--out DIR | --scratch] [NOTEBOOK ...]

With no NOTEBOOK, runs every notebooks/[0-9][0-9]_*.ipynb in name order. Without --out the outputs are
written back into the notebooks (what `deno task notebooks` does); with --out DIR the executed copies go to
DIR and the originals are left alone; --scratch does the same in a temporary folder that is then removed
(what tests/notebooks_test.ts does).

Why not `jupyter nbconvert --execute`: the Deno kernel sometimes sends `status: idle` before the cell's
output messages, and stock nbclient stops listening at idle, so outputs are silently dropped. This runner
keeps reading IOPub for a grace period after idle, routes any message that arrives even later to the cell
that caused it, and drains the channel once more before the kernel is shut down.

It also: sets NO_COLOR=1 and (unless set) LORA_BLAS=off and LORA_FUSED=off for the kernel, so outputs repeat on any machine; ends every cell's source with a newline (see end_cells_with_newline); gives every figure's PNG its display size (see size_figures); removes ANSI escape codes and the absolute path of the repository
from outputs; fails, naming the notebook and cell, when a cell throws or when an output still holds an ANSI
code, an absolute path or a TensorFlow.js banner. Needs Debian's jupyter-client, python3-nbclient and
python3-nbformat (they live under /usr/bin/python3) and the Deno kernelspec (`deno jupyter --install`).
"""

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete, CellExecutionError
from nbclient.util import ensure_async

NOTEBOOKS = Path(__file__).resolve().parent.parent
REPO = NOTEBOOKS.parent
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BANNERS = ("Hi there", "running TensorFlow.js in Node.js", "tfjs-node")


class DenoNotebookClient(NotebookClient):
    """nbclient that does not lose outputs the Deno kernel sends after reporting idle."""

    grace = 0.1  # seconds of IOPub silence, after idle, before a cell counts as finished

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cells_by_msg = {}  # execute request id -> (cell, index), to place late output
        self.late = 0  # messages that arrived after their cell's grace period and were placed anyway

    def _route(self, msg, current_id):
        """Process a message of an earlier cell; return True if it was one."""
        parent = msg["parent_header"].get("msg_id")
        if parent == current_id or parent not in self._cells_by_msg:
            return False
        cell, index = self._cells_by_msg[parent]
        if msg["msg_type"] != "status":
            self.late += 1
        try:
            self.process_message(msg, cell, index)
        except CellExecutionComplete:
            pass
        return True

    async def _async_poll_output_msg(self, parent_msg_id, cell, cell_index):
        self._cells_by_msg[parent_msg_id] = (cell, cell_index)
        idle = False
        while True:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=self.grace if idle else None))
            except Empty:
                return  # idle was seen and nothing more arrived for `grace` seconds
            if self._route(msg, parent_msg_id):
                continue
            if msg["parent_header"].get("msg_id") == parent_msg_id:
                try:
                    self.process_message(msg, cell, cell_index)
                except CellExecutionComplete:
                    idle = True

    async def _drain(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=0.1))
            except Empty:
                continue
            self._route(msg, None)

    async def async_execute(self, reset_kc=False, **kwargs):
        # nbclient 0.7's loop, plus a final drain while the kernel is still up.
        self.reset_execution_trackers()
        async with self.async_setup_kernel(**kwargs):
            msg_id = await ensure_async(self.kc.kernel_info())
            info = await self.async_wait_for_reply(msg_id)
            if info is not None and "language_info" in info["content"]:
                self.nb.metadata["language_info"] = info["content"]["language_info"]
            for index, cell in enumerate(self.nb.cells):
                await self.async_execute_cell(cell, index, execution_count=self.code_cells_executed + 1)
            await self._drain(1.0)
        return self.nb


def clean_text(text):
    text = ANSI.sub("", text)
    text = text.replace(f"file://{REPO}/", "").replace(f"{REPO}/", "").replace(str(REPO), ".")
    return text


def clean_outputs(nb):
    """Strip ANSI codes and machine paths; return a list of problems that remain."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = clean_text(out["text"])
            if out.get("output_type") == "error":
                out["evalue"] = clean_text(out.get("evalue", ""))
                out["traceback"] = [clean_text(line) for line in out.get("traceback", [])]
            for mime, value in out.get("data", {}).items():
                if isinstance(value, str):
                    out["data"][mime] = clean_text(value)
            text = str(out)
            for bad, why in ((("\x1b[",), "an ANSI code"), ((str(REPO), "file:///", "/root/", "/home/"), "an absolute path"),
                             (BANNERS, "a TensorFlow.js banner")):
                if any(b in text for b in bad):
                    problems.append(f"cell {index + 1}: output contains {why}")
    return problems


SVG_TAG = re.compile(r"<svg\b[^>]*>")
SVG_ATTRIBUTE = {name: re.compile(rf'\s{name}="(\d+(?:\.\d+)?)"') for name in ("width", "height")}


def size_figures(nb):
    """A figure's PNG is drawn at twice the SVG's size for sharp text; metadata tells a front end that shows the
    PNG to display it at the SVG's size (the Deno kernel sends results without metadata)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            svg = data.get("image/svg+xml", "")
            tag = SVG_TAG.search("".join(svg) if isinstance(svg, list) else svg) if "image/png" in data else None
            sizes = [SVG_ATTRIBUTE[name].search(tag.group(0)) for name in ("width", "height")] if tag else []
            if sizes and all(sizes):
                width, height = (round(float(m.group(1))) for m in sizes)
                out.setdefault("metadata", {})["image/png"] = {"width": width, "height": height}


def end_cells_with_newline(nb):
    """`deno fmt --check` (on a clean cache) wants every cell's source to end with a newline, while `deno fmt`
    itself does not add one and then caches the file as formatted; Jupyter saves cells without it."""
    for cell in nb.cells:
        if cell.source and not cell.source.endswith("\n"):
            cell.source += "\n"


def count_outputs(nb):
    return sum(len(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")


def first_line(source):
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:100]
    return ""


def run(path, out_path, timeout):
    nb = nbformat.read(path, as_version=4)
    client = DenoNotebookClient(
        nb,
        timeout=timeout,
        kernel_name="deno",
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,
    )
    name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    start = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as error:
        index = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        where = f"cell {index + 1} ({first_line(nb.cells[index].source)!r})" if index is not None else "a cell"
        print(f"FAILED {name}: {where} raised an error:\n{clean_text(str(error))}", file=sys.stderr)
        return False
    seconds = time.monotonic() - start
    problems = clean_outputs(nb)
    if problems:
        for problem in problems:
            print(f"FAILED {name}: {problem}", file=sys.stderr)
        return False
    nb.metadata.setdefault("kernelspec", {"display_name": "Deno", "language": "typescript", "name": "deno"})
    end_cells_with_newline(nb)
    size_figures(nb)
    nbformat.write(nb, out_path)
    code = sum(1 for c in nb.cells if c.cell_type == "code")
    late = f" ({client.late} arrived late and were kept)" if client.late else ""
    print(f"ok {name}: {code} code cells, {count_outputs(nb)} outputs{late}, {seconds:.1f} s", flush=True)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, help="write executed copies here instead of in place")
    parser.add_argument("--scratch", action="store_true", help="write executed copies to a temporary folder, then remove it")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one cell may run (default 900)")
    args = parser.parse_args()
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        sys.exit("no notebooks found")
    os.environ["NO_COLOR"] = "1"
    # The committed outputs come from the plain wasm backend with the readable formulas (the arithmetic the
    # notebooks teach), so that a re-run repeats them bit for bit on any machine and across speed work: with
    # OpenBLAS (wasm+blas) the products round in another order, and the fused kernels round differently again.
    os.environ.setdefault("LORA_BLAS", "off")
    os.environ.setdefault("LORA_FUSED", "off")
    out = Path(tempfile.mkdtemp(prefix="notebooks-")) if args.scratch else args.out
    if out:
        out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        for path in paths:
            if not run(path, out / path.name if out else path, args.timeout):
                sys.exit(1)
    finally:
        if args.scratch:
            shutil.rmtree(out, ignore_errors=True)
    print(f"all {len(paths)} notebooks ran in {time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    main()
