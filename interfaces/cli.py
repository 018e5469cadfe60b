"""The ``ris`` command (also ``python -m interfaces``)."""

from __future__ import annotations

import argparse
import contextlib
import sys

from config.logging import setup_logging
from config.settings import SettingsError, describe, load_settings


def _serve(args) -> int:
    from interfaces.runtime import Engine, StartupError

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        Engine(settings).serve_forever()
    except StartupError as exc:
        print(f"ris serve: {exc}", file=sys.stderr)
        return 2
    return 0


def _db_upgrade(args) -> int:
    from app.db import make_engine, upgrade

    settings = load_settings()
    setup_logging(settings.log_level)
    engine = make_engine(settings.database)
    upgrade(engine)
    print(f"database at the newest schema: {engine.url.render_as_string(hide_password=True)}")
    return 0


def _send(args) -> int:
    """Send HL7 v2 message files over MLLP and print each ACK (a small MLLP client for people)."""
    from interfaces.mllp.client import MLLPClient, MLLPError

    settings = load_settings()
    host, port = args.host or settings.host, args.port or settings.mllp_port
    worst = 0
    try:
        messages = [(name, open(name, "rb").read()) for name in args.files]
    except OSError as exc:
        print(f"ris send: {exc}", file=sys.stderr)
        return 2
    try:
        with MLLPClient(host, port, timeout=args.timeout) as client:
            for name, payload in messages:
                ack = client.send(payload)
                text = ack.decode("latin-1").replace("\r", "\n").strip()
                print(f"== {name}\n{text}")
                if "MSA|AA" not in text and "MSA|CA" not in text:
                    worst = 1
    except (OSError, MLLPError) as exc:
        print(f"ris send: {host}:{port}: {exc}", file=sys.stderr)
        return 2
    return worst


def _settings(args) -> int:
    settings = load_settings()
    for var, default, doc in describe():
        name = var[4:].lower()
        value = getattr(settings, name)
        shown = ",".join(value) if isinstance(value, tuple) else str(value)  # as it would be set in the environment
        if value and name in ("secret_key", "api_token"):
            shown = "(set, not shown)"
        print(f"{var}={shown}\n    {doc} (default: {default!r})")
    return 0


def _mapping_check(args) -> int:
    """Validate a folder of mapping profiles; exit 1 naming the file, line and key of each problem."""
    from interfaces.mapping_tools import check_folder

    settings = load_settings()
    folder = args.folder or settings.mappings_path
    profiles = check_folder(folder, settings.mapping_profile)
    for problem in profiles.problems:
        print(f"ris mapping check: {problem}", file=sys.stderr)
    for profile in sorted(profiles.profiles.values(), key=lambda p: p.name):
        senders = ", ".join(map(str, profile.senders)) or (
            "other senders" if profile.name == settings.mapping_profile else "no sender")
        print(f"{profile.label}  {' <- '.join(profile.chain)}  for {senders}")
    return 1 if profiles.problems else 0


def _message_source(args) -> tuple[bytes | None, int | None] | str:
    """(raw, None) for a message FILE, (None, id) for a stored message (--message-id, or a MESSAGE argument that is
    a number and no file); a text saying what is wrong otherwise."""
    import os

    message_id = args.message_id
    if args.file is not None and message_id is None and args.file.isdigit() and not os.path.exists(args.file):
        return None, int(args.file)          # "ris mapping test 42": the stored message 42
    if (args.file is None) == (message_id is None):
        return "give a message FILE, or a stored message's id (ris mapping test 42, or --message-id 42)"
    if args.file is None:
        return None, message_id
    try:
        return open(args.file, "rb").read(), None
    except OSError as exc:
        return str(exc)


def _mapping_test(args) -> int:
    """Show what a message would do (fields, profile, commands, worklist item, ACK); commits nothing."""
    import json

    from app.db import make_engine, make_session_factory, upgrade
    from app.errors import DomainError
    from interfaces.hl7.intake import HL7Intake
    from interfaces.mapping_tools import format_report, mapping_test
    from interfaces.runtime import load_profiles
    from mappings.profile import ProfileError

    source = _message_source(args)
    if isinstance(source, str):
        print(f"ris mapping test: {source}", file=sys.stderr)
        return 2
    raw, message_id = source
    settings = load_settings()
    setup_logging("ERROR")
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        intake = HL7Intake(settings, make_session_factory(engine), load_profiles(settings))
        report = mapping_test(intake, settings, raw=raw, message_id=message_id, profile_name=args.profile)
    except (ProfileError, DomainError) as exc:
        print(f"ris mapping test: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0 if report["ack_code"] == "AA" else 1


def _mapping_compare(args) -> int:
    """Apply the same stored messages with two sets of profiles and show what differs; commits nothing.
    Exit 0 when nothing differs, 1 when something does, 2 when the comparison cannot be made."""
    import datetime as dt
    import json
    from pathlib import Path

    from app.db import make_engine, make_session_factory, upgrade
    from app.errors import DomainError
    from interfaces.mapping_tools import compare_candidates, format_comparison

    settings = load_settings()
    setup_logging("ERROR")
    new_folder, new_files = None, {}
    for item in args.new:        # a folder, or profile files written over the old folder
        path = Path(item)
        if path.is_dir():
            new_folder = path
        else:
            try:
                new_files[path.name] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                print(f"ris mapping compare: {item}: {exc}", file=sys.stderr)
                return 2
    old_folder = args.old or None
    try:
        since = dt.datetime.fromisoformat(args.since) if args.since else None
    except ValueError:
        print(f"ris mapping compare: --since {args.since!r} is not an ISO 8601 date and time", file=sys.stderr)
        return 2
    first, _, last = (args.ids or "").partition("-")
    if args.ids and not (first.isdigit() and (not last or last.isdigit())):
        print(f"ris mapping compare: --ids {args.ids!r} is N or N-M", file=sys.stderr)
        return 2
    selection = dict(from_id=int(first) if first else None,
                     to_id=int(last) if last else (int(first) if first and "-" not in args.ids else None),
                     status=args.status, message_type=args.type, sender=args.sender, since=since, limit=args.limit)
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        report = compare_candidates(settings, make_session_factory(engine), selection,
                                    old_folder=old_folder, new_folder=new_folder or old_folder,
                                    new_files=new_files or None)
    except DomainError as exc:
        for problem in getattr(exc, "problems", None) or [exc]:
            print(f"ris mapping compare: {problem}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_comparison(report,
                                                                                                show_same=args.all))
    return 1 if report["differing"] else 0


def _mapping_worklist(args) -> int:
    """Show what a modality (by its calling AE title) receives from the live worklist; commits nothing."""
    import json

    from app.db import make_engine, make_session_factory, upgrade
    from app.errors import DomainError
    from interfaces.mapping_tools import format_worklist, worklist_preview

    settings = load_settings()
    setup_logging("ERROR")
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        report = worklist_preview(make_session_factory(engine, read_only=True), settings,
                                  calling_aet=args.calling_aet, date=args.date, modality=args.modality,
                                  station_aet=args.station_aet, accession=args.accession, patient_id=args.patient_id)
    except DomainError as exc:
        print(f"ris mapping worklist: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_worklist(report))
    return 0 if report["status"]["meaning"] == "Success" else 1


def _read_password(args) -> str | None:
    """The new password: RIS_USER_PASSWORD, else asked twice at the terminal (never an argument)."""
    import getpass
    import os

    password = os.environ.get("RIS_USER_PASSWORD")
    if password is not None:
        return password
    if not sys.stdin.isatty():
        print("ris user: set RIS_USER_PASSWORD or run at a terminal to be asked for the password", file=sys.stderr)
        return None
    password = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != password:
        print("ris user: the two passwords differ", file=sys.stderr)
        return None
    return password


@contextlib.contextmanager
def _admin_sessions():
    """The session factory of an administration command on the configured database (schema brought up to date),
    the engine disposed afterwards."""
    from app.db import make_engine, make_session_factory, upgrade

    settings = load_settings()
    setup_logging("ERROR")
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        yield make_session_factory(engine)
    finally:
        engine.dispose()


def _user(args) -> int:
    """Add a user (the first administrator too), change a password, or list the users."""
    import getpass

    from app.db import unit_of_work
    from app.errors import DomainError
    from app.models import User
    from app.services import audit, auth

    with _admin_sessions() as sessions:
        try:
            if args.user_command == "list":
                with unit_of_work(sessions) as db:
                    for user in db.query(User).order_by(User.username):
                        print(f"{user.username}\t{user.role.value}\t{'active' if user.active else 'inactive'}"
                              f"\t{user.full_name}")
                return 0
            password = _read_password(args)
            if password is None:
                return 2
            with unit_of_work(sessions) as db:
                if args.user_command == "add":
                    user = auth.add_user(db, args.name, password, args.role, full_name=args.full_name)
                    detail = f"added user {user.username} with role {user.role.value}"
                else:
                    user = auth.set_password(db, args.name, password)
                    detail = f"changed the password of {user.username}"
                audit.record(db, "change", username=f"cli:{getpass.getuser()}", entity="user",
                             entity_id=user.username, detail=detail, source="localhost", channel="cli")
            print(f"ris user: {detail}")
            return 0
        except DomainError as exc:
            print(f"ris user: {exc.message}", file=sys.stderr)
            return 1


def _token(args) -> int:
    """Add an API token (its secret printed once), list the tokens, or revoke one."""
    import getpass

    from app.db import unit_of_work
    from app.errors import DomainError
    from app.models import ApiToken
    from app.services import audit, auth

    with _admin_sessions() as sessions:
        try:
            with unit_of_work(sessions) as db:
                if args.token_command == "list":
                    for token in db.query(ApiToken).order_by(ApiToken.name):
                        print(f"{token.name}\t{token.role.value}\t{'revoked' if token.revoked else 'active'}"
                              f"\t{token.created_at:%Y-%m-%d %H:%M} UTC")
                    return 0
                if args.token_command == "add":
                    token, secret = auth.add_token(db, args.name, args.role)
                    detail = f"added API token {token.name} with role {token.role.value}"
                else:
                    token, secret = auth.revoke_token(db, args.name), None
                    detail = f"revoked API token {token.name}"
                audit.record(db, "change", username=f"cli:{getpass.getuser()}", entity="api_token",
                             entity_id=token.name, detail=detail, source="localhost", channel="cli")
            print(f"ris token: {detail}")
            if secret is not None:
                print(f"Authorization: Bearer {secret}")
                print("(shown once: only its digest is kept)", file=sys.stderr)
            return 0
        except DomainError as exc:
            print(f"ris token: {exc.message}", file=sys.stderr)
            return 1


def _messages_prune(args) -> int:
    """Delete stored messages older than the retention period now (what the daily job does)."""
    from app.db import make_engine, make_session_factory, upgrade
    from interfaces.scheduler.jobs import prune_messages

    settings = load_settings()
    setup_logging("ERROR")
    days = settings.message_retention_days if args.days is None else args.days
    if days <= 0:
        print("ris messages prune: retention is 0 days (keep everything): nothing pruned")
        return 0
    include_errors = args.include_errors or settings.message_retention_include_errors
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        count = prune_messages(make_session_factory(engine), days, include_errors)
    finally:
        engine.dispose()
    kept = "" if include_errors else "; messages in ERROR kept (--include-errors to prune them too)"
    print(f"ris messages prune: {count} messages older than {days:g} days deleted{kept}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ris", description="RIS integration engine")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run MLLP, DICOM, HTTP and the scheduler until SIGTERM/SIGINT").set_defaults(func=_serve)
    db = sub.add_parser("db", help="database tasks").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="migrate the database to the newest schema").set_defaults(func=_db_upgrade)
    send = sub.add_parser("send", help="send HL7 v2 message files over MLLP and print the ACKs")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--host", default="", help="default: RIS_HOST")
    send.add_argument("--port", type=int, default=0, help="default: RIS_MLLP_PORT")
    send.add_argument("--timeout", type=float, default=30.0)
    send.set_defaults(func=_send)
    sub.add_parser("settings", help="show every setting, its value and its RIS_ variable").set_defaults(func=_settings)
    mapping = sub.add_parser("mapping", help="the analyst's mapping tools (they commit nothing)").add_subparsers(
        dest="mapping_command", required=True)
    check = mapping.add_parser("check", help="validate a folder of mapping profiles (exit 1 on a problem)")
    check.add_argument("folder", nargs="?", default="", metavar="DIR", help="default: RIS_MAPPINGS_DIR")
    check.set_defaults(func=_mapping_check)
    test = mapping.add_parser("test", help="show what a message would do: fields, profile, commands, worklist, ACK")
    test.add_argument("file", nargs="?", metavar="MESSAGE", help="an HL7 v2 message file, or a stored message's id")
    test.add_argument("--message-id", type=int, help="a stored message instead of a file")
    test.add_argument("--profile", default=None, help="use this profile instead of the sender's")
    test.add_argument("--json", action="store_true", help="print the report as JSON")
    test.set_defaults(func=_mapping_test)
    compare = mapping.add_parser("compare", help="apply stored messages with two sets of profiles: what differs")
    compare.add_argument("new", nargs="+", metavar="NEW",
                         help="the new profiles: a folder, or profile files written over the old folder")
    compare.add_argument("--old", default="", metavar="DIR", help="the old profiles' folder (default: RIS_MAPPINGS_DIR)")
    compare.add_argument("--ids", default="", metavar="N-M", help="stored message ids N to M (or N, or N-)")
    compare.add_argument("--status", default="", help="only messages of this status (e.g. ERROR)")
    compare.add_argument("--type", default="", help="only messages of this type (e.g. ORM^O01)")
    compare.add_argument("--sender", default="", help="only messages of this sender (MSH-3^MSH-4)")
    compare.add_argument("--since", default="", help="only messages received since (ISO 8601)")
    compare.add_argument("--limit", type=int, default=100, help="at most this many messages (1-1000)")
    compare.add_argument("--all", action="store_true", help="list the messages that do not differ too")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.set_defaults(func=_mapping_compare)
    worklist = mapping.add_parser("worklist", help="what a modality receives from the live worklist")
    worklist.add_argument("--calling-aet", required=True, help="the modality's AE title")
    worklist.add_argument("--date", default=None, help="YYYYMMDD or a range (default today; '' every date)")
    worklist.add_argument("--modality", default="")
    worklist.add_argument("--station-aet", default="")
    worklist.add_argument("--accession", default="")
    worklist.add_argument("--patient-id", default="")
    worklist.add_argument("--json", action="store_true", help="print the answers as JSON")
    worklist.set_defaults(func=_mapping_worklist)
    messages = sub.add_parser("messages", help="the inbound message store").add_subparsers(
        dest="messages_command", required=True)
    prune = messages.add_parser("prune", help="delete answered messages older than the retention period now")
    prune.add_argument("--days", type=float, default=None, help="default: RIS_MESSAGE_RETENTION_DAYS")
    prune.add_argument("--include-errors", action="store_true",
                       help="delete messages in ERROR too (default: RIS_MESSAGE_RETENTION_INCLUDE_ERRORS)")
    prune.set_defaults(func=_messages_prune)
    user = sub.add_parser("user", help="people who sign in to the web pages").add_subparsers(
        dest="user_command", required=True)
    user_add = user.add_parser("add", help="add a user (password from RIS_USER_PASSWORD or asked)")
    user_add.add_argument("name", metavar="NAME")
    user_add.add_argument("--role", required=True,
                          help="technologist, scheduler, radiologist, analyst (interface analyst) or administrator")
    user_add.add_argument("--full-name", default="")
    user_add.set_defaults(func=_user)
    user_pw = user.add_parser("password", help="set a user's password (RIS_USER_PASSWORD or asked)")
    user_pw.add_argument("name", metavar="NAME")
    user_pw.set_defaults(func=_user)
    user.add_parser("list", help="list the users and their roles").set_defaults(func=_user)
    token = sub.add_parser("token", help="bearer tokens for systems using the JSON API and FHIR").add_subparsers(
        dest="token_command", required=True)
    token_add = token.add_parser("add", help="add a token and print its secret (once)")
    token_add.add_argument("name", metavar="NAME", help="who uses it, e.g. his-fhir")
    token_add.add_argument("--role", required=True,
                           help="technologist, scheduler, radiologist, analyst (interface analyst) or administrator")
    token_add.set_defaults(func=_token)
    token_revoke = token.add_parser("revoke", help="revoke a token: it is refused from then on")
    token_revoke.add_argument("name", metavar="NAME")
    token_revoke.set_defaults(func=_token)
    token.add_parser("list", help="list the tokens, their roles and whether revoked").set_defaults(func=_token)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"ris: {exc}", file=sys.stderr)
        return 2
