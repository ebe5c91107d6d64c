"""The ``dynams`` command line: datasets (convert, info), the selector (serve) and its jobs."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .core.data.idx import IDXError, load_idx_split
from .core.data.shards import (
    DatasetNotFound,
    ShardError,
    read_manifest,
    verify_dataset,
    write_image_folder,
    write_shards,
)
from .core.data.stream import verify_samples
from .core.registry import UnknownName

DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"


def _convert(args: argparse.Namespace) -> int:
    """IDX directory → ``OUT/train`` and ``OUT/test`` (test uses train stats), or an image
    folder → ``OUT`` (encoded shards with the ``image`` decoder)."""
    if args.image_folder:
        return _convert_image_folder(args)
    if args.size:
        raise ValueError("--size applies to --image-folder only (IDX images stay 1x28x28)")
    if args.skip_broken:
        raise ValueError("--skip-broken applies to --image-folder only")
    out = args.out.rstrip("/")
    started = time.perf_counter()
    images, labels = load_idx_split(args.idx, "train")
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    train = write_shards(f"{out}/train", images[:, None], labels,
                         rows_per_shard=args.rows_per_shard)
    print(f"wrote {out}/train: {train.num_samples} samples, {len(train.shards)} shards")
    try:
        test_images, test_labels = load_idx_split(args.idx, "test")
    except IDXError as exc:
        print(f"no test split converted: {exc}")
    else:
        test = write_shards(f"{out}/test", test_images[:, None], test_labels,
                            num_classes=train.fingerprint.num_classes,
                            rows_per_shard=args.rows_per_shard, stats_from=train)
        print(f"wrote {out}/test: {test.num_samples} samples, {len(test.shards)} shards")
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def _datasets_inside(path: str) -> list[tuple[str, object]]:
    """Datasets one level below a local directory (what `convert --out` writes)."""
    root = Path(path)
    if "://" in path or not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            found.append((sub.name, read_manifest(str(sub))))
        except ShardError:
            continue
    return found


def _convert_image_folder(args: argparse.Namespace) -> int:
    """Image folder (one sub-folder per class) → one dataset at ``OUT``, streamed."""
    started = time.perf_counter()
    manifest = write_image_folder(args.image_folder, args.out, size=args.size,
                                  rows_per_shard=args.rows_per_shard, limit=args.limit,
                                  progress=sys.stderr.isatty(), skip_broken=args.skip_broken)
    classes = manifest.class_names or ()
    print(f"wrote {args.out}: {manifest.num_samples} images, {len(classes)} classes, "
          f"{len(manifest.shards)} shards, decoded {list(manifest.sample_shape)}")
    if manifest.skipped:
        print(f"skipped {len(manifest.skipped)} images that do not decode (listed in the "
              f"manifest's 'skipped'):", file=sys.stderr)
        for name in manifest.skipped:
            print(f"  {name}", file=sys.stderr)
    print(f"done in {time.perf_counter() - started:.1f}s")
    return 0


def _info(args: argparse.Namespace) -> int:
    """Print a dataset's size, classes, decoder, fingerprint and shard layout."""
    try:
        manifest = verify_dataset(args.path) if args.verify else read_manifest(args.path)
    except DatasetNotFound:
        inside = _datasets_inside(args.path)
        if not inside:
            raise
        print(f"{args.path} holds {len(inside)} datasets (run `dynams dataset info` on one):")
        for name, found in inside:
            print(f"  {name:<16} {found.num_samples} samples, {found.fingerprint.num_classes} "
                  f"classes, decoder {found.decoder.get('name')}")
        return 0
    if args.verify:
        verify_samples(args.path, manifest, decode_threads=2)
    fp = manifest.fingerprint
    params = {k: v for k, v in manifest.decoder.items() if k != "name"}
    print(f"dataset:        {args.path}  ({manifest.format})")
    print(f"samples:        {fp.num_samples}")
    print(f"classes:        {fp.num_classes}" + (
        f"  ({', '.join(manifest.class_names)})" if manifest.class_names else ""))
    print(f"labels sha256:  {fp.labels_sha256}")
    print(f"decoder:        {manifest.decoder.get('name')} {params}")
    print(f"sample:         {list(manifest.sample_shape)} after decoding")
    print(f"normalisation:  mean {list(manifest.mean)} std {list(manifest.std)}")
    print(f"shards:         {len(manifest.shards)}" + (
        "  (verified: every sample decoded)" if args.verify else ""))
    for shard in manifest.shards:
        print(f"  {shard.path}  rows [{shard.start}, {shard.stop})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run the selector until SIGTERM/SIGINT: Ray (existing or embedded) + gRPC server."""
    import logging
    import signal
    import threading

    from .core.models.models import load_model_modules
    from .service.dataset_access import DatasetAccess
    from .service.limits import Limits
    from .service.ray_cluster import connect
    from .service.server import SelectorServer, TLSFiles, check_workers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    token = None
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {args.token_file} is empty")
    limits = Limits(**{name: _limit_value(name, getattr(args, name))
                       for name in Limits.model_fields})
    DatasetAccess(limits.dataset_roots)  # a root that is itself not allowed fails here
    check_workers(limits)  # before Ray starts
    load_model_modules(args.models)
    ray = connect(args.ray_address)
    tls = TLSFiles(Path(args.tls_cert), Path(args.tls_key)) if args.tls_cert else None
    server = SelectorServer(args.address, state_dir=args.state_dir, token=token, tls=tls,
                            dashboard_url=ray.dashboard_url, limits=limits)
    server.start()
    print(f"dynams selector listening on {server.address}", flush=True)
    print(f"Ray dashboard: {ray.dashboard_url or 'not running'}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("shutting down: stopping scorers, state is on disk", flush=True)
    server.stop()
    ray.close()
    return 0


def _status(args: argparse.Namespace) -> int:
    """Print a running selector's jobs, rounds, scorer placement and Ray dashboard URL."""
    from .client import SelectorError
    from .core.job import JobState, RoundState

    try:
        with _connect(args) as client:
            jobs = [client.get_job(args.job)] if args.job else _job_details(client)
    except SelectorError as exc:
        print(f"dynams: error: {exc}", file=sys.stderr)
        return 1
    dashboard = next((job.dashboard_url for job in jobs if job.dashboard_url), "")
    print(f"selector:       {args.address}")
    print(f"Ray dashboard:  {dashboard or '(not reported: no jobs, or Ray without dashboard)'}")
    print(f"jobs:           {len(jobs)}")
    for job in jobs:
        if job.state is JobState.FAILED or job.spec is None:
            print(f"\njob {job.job_id}  FAILED (quarantined): {job.error}")
            print(f"  delete it (dynams job delete {job.job_id}) and create it again")
            continue
        spec, res = job.spec, job.spec.resources
        state = job.state.value if job.state else "?"
        print(f"\njob {spec.job_id}  {state}  ({spec.fingerprint.num_samples} samples, "
              f"{spec.epochs} epochs, rounds done {job.rounds_done}/{job.rounds_total})")
        print(f"  dataset:  {spec.dataset_uri}")
        print(f"  scorers:  {res.num_scorers} x (cpus {res.num_cpus:g}, gpus {res.num_gpus:g})")
        print(f"  fraction trained {job.fraction_trained:.3f}")
        for r in job.rounds:
            line = f"    round {r.round}  epoch {r.epoch}  {r.state.value:<8}"
            if r.weights_version >= 0 and r.state is not RoundState.WAITING:
                line += f"  weights v{r.weights_version}"
            if r.state is RoundState.DONE:
                line += f"  selected {r.selected}  {r.seconds:.2f}s"
            if r.error:
                line += f"  error: {r.error}"
            print(line)
        if not job.scorer_status:
            print(f"    ({_no_scorers_reason(job)})")
        for s in job.scorer_status:
            print(f"    {s.name}  node {s.node_id}  {s.device}  rows {s.rows}  "
                  f"inputs {s.input_bytes / 2**20:.1f} MiB")
    return 0


def _no_scorers_reason(job) -> str:
    """Why a job (a ``JobInfo``) has no scorers now, true for its state."""
    from .core.job import JobState, RoundState

    if job.state is JobState.FINISHED:
        return "no scorers: every round is selected, so they were released"
    pending = next((r for r in job.rounds if r.state is not RoundState.DONE), None)
    if pending is None:
        return "no scorers now"
    if pending.state is RoundState.SCORING:
        return f"no scorers yet: they are starting for round {pending.round}"
    start = (f"they start when weights for round {pending.round} (epoch {pending.epoch}) "
             "are pushed")
    if job.rounds_done or pending.state is RoundState.FAILED:
        return f"no scorers now (released when idle, or the selector restarted); {start}"
    return f"no scorers yet: {start}"


def _job_details(client) -> list:
    """Every job in full: ListJobs' summaries, then GetJob for each job not failed."""
    from .client import SelectorError, Status
    from .core.job import JobState

    jobs = []
    for summary in client.list_jobs():
        if summary.state is JobState.FAILED:
            jobs.append(summary)
            continue
        try:
            jobs.append(client.get_job(summary.job_id))
        except SelectorError as exc:
            if exc.status is not Status.NOT_FOUND:  # deleted meanwhile: skip it
                raise
    return jobs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynams", description=__doc__,
        epilog="example: dynams dataset convert --out data/fashion-mnist && dynams serve")
    commands = parser.add_subparsers(dest="command", required=True)

    dataset = commands.add_parser("dataset", help="convert and inspect shard datasets",
                                  epilog="example: dynams dataset info data/fashion-mnist")
    dataset_cmds = dataset.add_subparsers(dest="dataset_command", required=True)

    convert = dataset_cmds.add_parser(
        "convert", help="convert MNIST-style IDX files or an image folder into Parquet shards",
        epilog="examples: dynams dataset convert --out data/fashion-mnist; "
               "dynams dataset convert --out data/fmnist-10k --limit 10000; "
               "dynams dataset convert --image-folder ~/imgs/train --out data/imgs/train "
               "--size 3,64,64")
    convert.add_argument("--idx", "--data-dir", dest="idx", default=DEFAULT_IDX_DIR,
                         help=f"directory with train-/t10k- IDX files, raw or .gz "
                              f"(default: {DEFAULT_IDX_DIR}); writes OUT/train and OUT/test")
    convert.add_argument("--image-folder", metavar="DIR",
                         help="convert this ImageFolder tree instead (one sub-folder of "
                              "JPEG/PNG/WebP/BMP images per class; labels follow the sorted "
                              "folder names); writes one dataset at OUT, keeping the images "
                              "encoded")
    convert.add_argument("--size", type=_size, metavar="C,H,W",
                         help="--image-folder: decoded size, C 1 (grey) or 3 (RGB); images "
                              "are resized to cover HxW and centre-cropped (default: the "
                              "first image's)")
    convert.add_argument("--out", required=True,
                         help="output directory or pyarrow URI (must not exist for "
                              "--image-folder)")
    convert.add_argument("--rows-per-shard", type=_positive_int, default=8192,
                         help="rows per Parquet file; a job's scorers each take >= 1 shard "
                              "(default: 8192)")
    convert.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                         help="convert a subset of N training samples for a quick run: IDX, "
                              "the first N (the test split stays whole); --image-folder, N "
                              "spread evenly over the sorted files, so every class keeps "
                              "its share (default: all)")
    convert.add_argument("--skip-broken", action="store_true",
                         help="--image-folder: leave out images that do not decode, listing "
                              "each on stderr and in the manifest's 'skipped' (default: stop "
                              "at the first, naming it)")
    convert.set_defaults(func=_convert)

    info = dataset_cmds.add_parser(
        "info", help="print a shard dataset's layout and fingerprint",
        epilog="example: dynams dataset info data/fashion-mnist/train --verify")
    info.add_argument("path", help="dataset directory or pyarrow URI")
    info.add_argument("--verify", action="store_true",
                      help="read every shard, check indices, labels and fingerprint, and "
                           "decode every sample (a corrupt one is named by shard and row)")
    info.set_defaults(func=_info)

    serve = commands.add_parser(
        "serve", help="run the selector (gRPC server on Ray)",
        epilog="example: dynams serve --address 0.0.0.0:50051 --token-file token "
               "--dataset-root /data")
    serve.add_argument("--address", default="127.0.0.1:50051",
                       help="host:port to listen on (default: 127.0.0.1:50051; port 0 picks one)")
    serve.add_argument("--ray-address", default="auto",
                       help="'auto' (join the running cluster, else start an embedded local "
                            "Ray), 'local' (always embedded), or a cluster address")
    serve.add_argument("--state-dir", default="dynams-state",
                       help="where job specs and rounds persist (default: ./dynams-state)")
    serve.add_argument("--token-file", help="file holding the bearer token clients must send")
    serve.add_argument("--tls-cert", help="PEM certificate chain for TLS (with --tls-key)")
    serve.add_argument("--tls-key", help="PEM private key for TLS (with --tls-cert)")
    serve.add_argument("--models", action="append", default=[], metavar="MODULE",
                       help="module whose import registers architectures, decoders or scores "
                            "(repeatable)")
    _add_limit_flags(serve.add_argument_group("limits",
                                              "what clients may ask of this selector"))
    serve.set_defaults(func=_serve)

    selector = argparse.ArgumentParser(add_help=False)  # how to reach `dynams serve`
    selector.add_argument("--address", default="127.0.0.1:50051",
                          help="host:port of `dynams serve` (default: 127.0.0.1:50051)")
    selector.add_argument("--token-file", help="file holding the selector's bearer token")
    selector.add_argument("--tls-ca", help="PEM CA certificate of a TLS selector")
    selector.add_argument("--timeout", type=float, default=10.0,
                          help="seconds per call (default: 10)")

    status = commands.add_parser(
        "status", parents=[selector], epilog="example: dynams status --address head:50051",
        help="print a selector's jobs, rounds, scorer placement and dashboard URL")
    status.add_argument("--job", help="only this job (default: every job)")
    status.set_defaults(func=_status)

    job = commands.add_parser("job", help="list or delete a selector's jobs",
                              epilog="example: dynams job list --address head:50051")
    job_cmds = job.add_subparsers(dest="job_command", required=True)
    listing = job_cmds.add_parser("list", parents=[selector], help="one line per job",
                                  epilog="example: dynams job list --address head:50051")
    listing.set_defaults(func=_job_list)
    delete = job_cmds.add_parser(
        "delete", parents=[selector], epilog="example: dynams job delete fmnist-r03",
        help="delete a job: its scorers stop and its saved rounds are removed, so the id "
             "can be reused for a new run")
    delete.add_argument("job_id")
    delete.set_defaults(func=_job_delete)
    return parser


def _connect(args: argparse.Namespace):
    from .client import SelectorClient

    token = Path(args.token_file).read_text().strip() if args.token_file else None
    return SelectorClient(args.address, token=token, tls_ca=args.tls_ca, timeout=args.timeout,
                          retries=2)


def _job_list(args: argparse.Namespace) -> int:
    """One line per job: id, state, rounds done, samples, dataset."""
    from .client import SelectorError
    from .core.job import JobState

    try:
        with _connect(args) as client:
            jobs = client.list_jobs()
    except SelectorError as exc:
        print(f"dynams: error: {exc}", file=sys.stderr)
        return 1
    for job in jobs:
        state = job.state.value if job.state else "?"
        state = state.upper() if job.state is JobState.FAILED else state  # stands out
        samples, dataset = ((job.spec.fingerprint.num_samples, job.spec.dataset_uri)
                            if job.spec else ("?", "(spec unreadable)"))
        print(f"{job.job_id:<32} {state:<9} rounds {job.rounds_done}/{job.rounds_total}  "
              f"{samples} samples  {dataset}")
    if not jobs:
        print("(no jobs)")
    return 0


def _job_delete(args: argparse.Namespace) -> int:
    """Delete one job (its scorers and saved rounds)."""
    from .client import SelectorError

    try:
        with _connect(args) as client:
            client.delete_job(args.job_id)
    except SelectorError as exc:
        print(f"dynams: error: {exc}", file=sys.stderr)
        return 1
    print(f"deleted job {args.job_id}")
    return 0


# Limits fields whose flag takes another unit than the field: (metavar, field units per flag unit).
_LIMIT_UNITS = {"max_memory_per_job": ("GIB", 2**30)}


def _add_limit_flags(group: argparse._ArgumentGroup) -> None:
    """One flag per ``Limits`` field (``--max-jobs`` for ``max_jobs``): its type, bounds,
    default and help are the field's, so limits.py alone defines them."""
    from .service.limits import Limits

    for name, field in Limits.model_fields.items():
        if name == "dataset_roots":
            group.add_argument("--dataset-root", action="append", default=[], metavar="URI",
                               dest=name, help=f"{field.description} (repeatable)")
            continue
        number = int if field.annotation is int else float
        metavar, scale = _LIMIT_UNITS.get(name, ("N", 1))
        if field.description and field.description.startswith("seconds"):
            metavar = "S"
        default = field.default if field.default is None else field.default / scale
        shown = "unlimited" if default is None else f"{default:g}"
        group.add_argument(f"--{name.replace('_', '-')}", type=_bounded(number, field),
                           default=default, metavar=metavar, dest=name,
                           help=f"{field.description} (default: {shown})")


def _limit_value(name: str, value):
    """A limit flag's value in the field's units."""
    if isinstance(value, list):
        return tuple(value)
    scale = _LIMIT_UNITS.get(name, ("", 1))[1]
    return value if value is None or scale == 1 else int(value * scale)


def _bounded(number: type, field):
    """An argparse type: ``number`` within the field's ``ge``/``gt`` bounds."""
    bounds = [(op, getattr(m, op)) for m in field.metadata for op in ("ge", "gt")
              if hasattr(m, op)]

    def parse(text: str):
        value = number(text)
        for op, bound in bounds:
            if (value < bound) if op == "ge" else not (value > bound):
                sign = ">=" if op == "ge" else ">"
                raise argparse.ArgumentTypeError(f"must be {sign} {bound:g}, got {value:g}")
        return value

    return parse


def _size(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(v) for v in text.split(","))
    except ValueError:
        size = ()
    if len(size) != 3 or size[0] not in (1, 3) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected C,H,W with C 1 or 3, e.g. 3,64,64; got "
                                         f"{text!r}")
    return size  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynams`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (IDXError, ShardError, UnknownName, ValueError, OSError, ImportError) as exc:
        print(f"dynams: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
