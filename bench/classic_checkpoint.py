#!/usr/bin/env python3
"""The classic checkpoint pattern that idem's `each` replaces, as a reference for the bench.

For every record of a CSV not yet in the done list, do the work (make sure
`ROOT/spool/{id}.lock` is absent, as the bench's `each` plan does), append the id to the list
and rewrite the whole list as JSON, so a crash resumes where it stopped. The rewrite makes the
loop quadratic in the number of records. `--no-checkpoint` runs the same loop without it.

    classic_checkpoint.py CSV ROOT DONE_JSON [--no-checkpoint]
"""

import csv
import json
import os
import sys


def main(csv_path: str, root: str, done_path: str, checkpoint: bool) -> None:
    try:
        with open(done_path) as f:
            done = json.load(f)
    except FileNotFoundError:
        done = []
    seen = set(done)
    spool = os.path.join(root, "spool")
    with open(csv_path, newline="") as f:
        for record in csv.DictReader(f):
            key = record["id"]
            if key in seen:
                continue
            try:
                os.remove(os.path.join(spool, key + ".lock"))
            except FileNotFoundError:
                pass
            done.append(key)
            seen.add(key)
            if checkpoint:
                with open(done_path, "w") as out:
                    json.dump(done, out)
    print(f"processed {len(done)}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--no-checkpoint"]
    if len(args) != 3:
        sys.exit(__doc__)
    main(*args, checkpoint="--no-checkpoint" not in sys.argv)
