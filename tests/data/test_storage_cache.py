"""A file another process writes after this one listed its folder is still found (s3fs caches
folder listings; the trainer's driver reads what Ray workers wrote)."""

import subprocess
import sys

from clipvg.data import storage


def test_file_written_elsewhere_after_a_listing_is_found(s3):
    folder = s3.uri("cache-check")
    storage.write_bytes(b"a", f"{folder}/a.txt", **s3.options)
    fs, path = storage.filesystem(folder, **s3.options)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(path)] == ["a.txt"]  # the listing is now cached
    code = ("import sys; from clipvg.data import storage; "
            "storage.write_bytes(b'b', sys.argv[1], endpoint_url=sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, f"{folder}/b.txt", s3.endpoint_url], check=True)
    assert storage.exists(f"{folder}/b.txt", **s3.options)
    assert storage.read_bytes(f"{folder}/b.txt", **s3.options) == b"b"
