#!/usr/bin/env python3
"""The reference of the `each` that writes a page per record (issue 20): what a careful Python
script does to get the durability idem promises, without checkpoints.

    durable_pages.py USERS.CSV ROOT

For every record `id,name,email`: make `ROOT/pages/{id}` (and fsync `pages`, so the new
directory survives a power cut), then write `pages/{id}/index.txt` atomically: a temporary
beside it, written, fsync'ed, renamed over it, the directory fsync'ed. It prints how many
pages it wrote.
"""

import csv
import os
import sys


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> int:
    src, root = sys.argv[1], sys.argv[2]
    pages = os.path.join(root, "pages")
    os.makedirs(pages, exist_ok=True)
    written = 0
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            d = os.path.join(pages, row["id"])
            try:
                os.mkdir(d)
                fsync_dir(pages)
            except FileExistsError:
                pass
            target = os.path.join(d, "index.txt")
            tmp = os.path.join(d, ".index.txt.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{row['name']} <{row['email']}>\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
            fsync_dir(d)
            written += 1
    print(f"written {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
