"""CLI ``pacs find|get|send``: a PACS over DICOMweb (``--url``) or DIMSE (``--host/--port/--aet``)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .predict import say


def _add_connection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the PACS is (DICOMweb --url, or DIMSE --host/--port/--aet)")
    g.add_argument("--url", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    g.add_argument("--host", help="DIMSE: the PACS's host name or address")
    g.add_argument("--port", type=int, help="DIMSE: its DICOM port (often 104 or 4242)")
    g.add_argument("--aet", default="ORTHANC", help="DIMSE: the PACS's AE title (default ORTHANC)")
    g.add_argument("--calling-aet", default="SEG_STUDIO", help="DIMSE: our AE title (default SEG_STUDIO)")
    g.add_argument(
        "--user", help="DICOMweb: user name (the password from --password or $SEG_STUDIO_PACS_PASSWORD)"
    )
    g.add_argument("--password", help=argparse.SUPPRESS)
    g.add_argument("--timeout", type=float, default=30.0, help="seconds one request may take (default 30)")
    g.add_argument("--json", action="store_true", help="machine-readable output")


def add_pacs(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="pacs_action", metavar="ACTION", required=True)
    f = sub.add_parser("find", help="list studies, or the series of one study (or of all)")
    f.add_argument("--study", help="list the series of this StudyInstanceUID")
    f.add_argument("--series-level", action="store_true", help="list every series (default: studies)")
    f.add_argument("--modality", help="only series of this modality (e.g. MR, CT, SEG)")
    f.add_argument("--patient", help="only studies whose PatientName matches (wildcards * ?)")
    _add_connection(f)
    g = sub.add_parser("get", help="pull a series into the local cache (by UID); prints its folder")
    g.add_argument("series_uid", help="SeriesInstanceUID")
    g.add_argument("--study", help="its StudyInstanceUID (looked up when not given)")
    g.add_argument("--cache", type=Path, help="cache folder (default: the user cache dir's seg_studio/pacs)")
    g.add_argument("--refresh", action="store_true", help="pull again even when cached")
    _add_connection(g)
    s = sub.add_parser("send", help="push DICOM files (e.g. a SEG from predict --out result.dcm)")
    s.add_argument("files", type=Path, nargs="+", help="DICOM files or folders")
    _add_connection(s)


def config_from_args(args: argparse.Namespace):  # noqa: ANN201 - PacsConfig
    from ..core.pacs import PacsConfig

    return PacsConfig(
        url=args.url,
        host=args.host,
        port=args.port,
        aet=args.aet,
        calling_aet=args.calling_aet,
        username=args.user,
        password=args.password or os.environ.get("SEG_STUDIO_PACS_PASSWORD"),
        timeout_s=args.timeout,
    )


def run_pacs(args: argparse.Namespace) -> int:
    from ..core import pacs

    client = pacs.connect(config_from_args(args))
    action = args.pacs_action
    if action == "find":
        return _find(client, args)
    if action == "get":
        study = args.study or pacs.find_series_by_uid(client, args.series_uid).study_uid
        cached = None if args.refresh else pacs.cached_series(args.series_uid, args.cache)
        folder = pacs.get_series(client, study, args.series_uid, root=args.cache, refresh=args.refresh)
        n = sum(1 for f in folder.iterdir() if f.suffix == ".dcm")
        if args.json:
            say(
                json.dumps(
                    {
                        "series_uid": args.series_uid,
                        "folder": str(folder),
                        "instances": n,
                        "cached": bool(cached),
                    }
                )
            )
        else:
            say(
                f"{'in the cache' if cached else 'pulled'}: {n} instances of series {args.series_uid} in {folder}"
            )
        return 0
    n = pacs.send_files(client, args.files)
    say(json.dumps({"stored": n}) if args.json else f"stored {n} instance(s) on {client.config.describe()}")
    return 0


def _find(client, args: argparse.Namespace) -> int:  # noqa: ANN001 - a Pacs
    if args.study or args.series_level or args.modality:
        rows = client.find_series(args.study, args.modality)
        if args.json:
            say(json.dumps([r.as_dict() for r in rows], indent=2))
            return 0
        say(f"{len(rows)} series")
        for r in rows:
            n = "?" if r.instances is None else r.instances
            say(
                f"{r.series_uid}  {r.modality:<4} {n:>4} inst  {r.description or '(no description)'}  study {r.study_uid}"
            )
        return 0
    studies = client.find_studies(args.patient)
    if args.json:
        say(json.dumps([s.as_dict() for s in studies], indent=2))
        return 0
    say(f"{len(studies)} studies")
    for s in studies:
        say(
            f"{s.study_uid}  {s.patient_name or '?'} ({s.patient_id or '?'})  {s.study_date or '?'}  {s.modalities}  {s.description}"
        )
    return 0
