"""Model encryption throughput against a plain read of the same file.

Writes a random file (default 256 MB), then times: reading it (baseline),
encrypting it (AES-256-GCM in 1 MiB chunks, to a file) and decrypting it
back; prints MB/s and the ratio to the plain read. Not a test: it prints
figures.

    .venv/bin/python bench/encrypt.py [--size-mb 256] [--chunk-kib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from azaion_workloads.training import crypto


def timed(action) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="azaion-bench-", dir=args.dir))
    try:
        plain, sealed, back = scratch / "model.onnx", scratch / "model.onnx.enc", scratch / "back.onnx"
        with plain.open("wb") as handle:
            for _ in range(args.size_mb):
                handle.write(os.urandom(1024 * 1024))
        key = os.urandom(32)
        megabytes = args.size_mb * 1024 * 1024 / 1e6

        def read_all() -> None:
            with plain.open("rb") as handle:
                while handle.read(args.chunk_kib * 1024):
                    pass

        read_all()  # warm the page cache, so both sides read from memory
        baseline = min(timed(read_all) for _ in range(3))
        encrypt = min(
            timed(lambda: crypto.encrypt_file(plain, sealed, key, chunk_size=args.chunk_kib * 1024)) for _ in range(3)
        )
        decrypt = min(timed(lambda: crypto.decrypt_file(sealed, back, key)) for _ in range(3))

        class Discard:
            def write(self, data: bytes) -> int:
                return len(data)

        def cipher_only() -> None:
            with plain.open("rb") as handle:
                crypto.encrypt_stream(handle, Discard(), key, "bench", args.chunk_kib * 1024)  # type: ignore[arg-type]

        cipher = min(timed(cipher_only) for _ in range(3))
        assert back.read_bytes() == plain.read_bytes()
        overhead = sealed.stat().st_size - plain.stat().st_size

        print(f"file: {args.size_mb} MiB, chunk {args.chunk_kib} KiB, size overhead {overhead} bytes")
        print(f"plain read : {megabytes / baseline:8.1f} MB/s")
        print(f"encrypt    : {megabytes / encrypt:8.1f} MB/s  ({baseline / encrypt:.2f}x of plain read; durable file)")
        print(
            f"cipher only: {megabytes / cipher:8.1f} MB/s  ({baseline / cipher:.2f}x of plain read; output discarded)"
        )
        print(f"decrypt    : {megabytes / decrypt:8.1f} MB/s  ({baseline / decrypt:.2f}x of plain read)")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
