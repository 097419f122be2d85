"""``azaion-train``: the program a TrainingRun's Job runs.

Subcommands:

* ``run`` (the default): every step of a run, configured from the
  environment (see :mod:`azaion_workloads.training.config`).
* ``dataset``: only form the dataset.
* ``decrypt INPUT OUTPUT [--key-file KEY]``: decrypt a published model.

Exit codes: 0 done; 78 bad configuration or data (do not retry); 75 stopped
at a safe point after SIGTERM (resume later); anything else is retryable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

import azaion_contract as contract

log = logging.getLogger("azaion_workloads.training")


class _Parser(argparse.ArgumentParser):
    """Usage errors are configuration errors: exit with the permanent code."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(contract.EXIT_PERMANENT, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="azaion-train", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    commands.add_parser("run", help="form the dataset, train, export, encrypt, publish")
    commands.add_parser("dataset", help="only form the dataset")
    decrypt = commands.add_parser("decrypt", help="decrypt an encrypted model file")
    decrypt.add_argument("input", type=Path, help="an encrypted model (*.enc)")
    decrypt.add_argument("output", type=Path, help="where the model goes; written only when it verifies")
    decrypt.add_argument(
        "--key-file",
        type=Path,
        default=Path(os.environ.get("ENCRYPTION_KEY_FILE") or contract.ENCRYPTION_KEY_FILE),
        help="the 32-byte key: raw, 64 hex characters or base64 (default: $ENCRYPTION_KEY_FILE, "
        "else the mounted Secret)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "decrypt":
        return _decrypt(args.key_file, args.input, args.output)
    return _run(only_dataset=args.command == "dataset")


def _decrypt(key_file: Path, source: Path, destination: Path) -> int:
    from azaion_workloads.training import crypto

    try:
        key = crypto.load_key(key_file)
        header = crypto.decrypt_file(source, destination, key)
    except crypto.CryptoError as error:
        print(f"azaion-train decrypt: {error}", file=sys.stderr)
        return contract.EXIT_PERMANENT
    except OSError as error:
        print(f"azaion-train decrypt: {error}", file=sys.stderr)
        return contract.EXIT_PERMANENT
    print(f"decrypted {source} -> {destination} (key id {header.key_id})", file=sys.stderr)
    return contract.EXIT_OK


def _run(only_dataset: bool) -> int:
    from azaion_workloads.heartbeat import Heartbeat
    from azaion_workloads.status import reporter_from_env
    from azaion_workloads.training.config import EnvError, load_settings
    from azaion_workloads.training.errors import Interrupted, PermanentError
    from azaion_workloads.training.progress import Progress, StopFlag

    try:
        settings = load_settings()
    except EnvError as error:
        print(f"azaion-train: {error}", file=sys.stderr)
        return contract.EXIT_PERMANENT
    stop = StopFlag()
    stop.install()
    heartbeat = Heartbeat(settings.heartbeat_file)
    heartbeat.beat(force=True)
    reporter = reporter_from_env(contract.TRAININGRUN_PLURAL, settings.run_dir / "status.json")
    progress = Progress(reporter, heartbeat, stop)
    try:
        from azaion_workloads.training.offline import prepare_environment

        prepare_environment()
        from azaion_workloads.training.pipeline import Pipeline

        pipeline = Pipeline(settings, progress)
        if only_dataset:
            settings.layout.ensure()
            pipeline.report(pipeline.dataset())
        else:
            from azaion_workloads.training.offline import disable_integrations

            disable_integrations()
            pipeline.run()
    except PermanentError as error:
        log.error("permanent failure: %s", error)
        return contract.EXIT_PERMANENT
    except Interrupted as error:
        log.warning("interrupted: %s; a retry resumes from the last checkpoint", error)
        return contract.EXIT_INTERRUPTED
    except Exception:
        log.exception("run failed; a retry continues where it stopped")
        return 1
    return contract.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
