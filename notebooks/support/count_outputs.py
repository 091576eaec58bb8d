"""Counts what a notebook's code cells printed: lines of stream text plus one per rich display.

Used to compare runners: stock `jupyter nbconvert --execute` loses late output from the Deno kernel, run.py does not.

    /usr/bin/python3 notebooks/support/count_outputs.py NOTEBOOK...
"""
import json
import sys

for path in sys.argv[1:]:
    with open(path, encoding="utf-8") as f:
        notebook = json.load(f)
    lines = 0
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                lines += "".join(output["text"]).count("\n")
            elif "data" in output:
                lines += 1
    print(f"{lines}\t{path}")
