"""Engine settings: one documented default per setting, overridable by environment (RIS_...).

This module imports nothing of ours outside config/. Every setting has a default that runs the whole engine on the
embedded default (SQLite and files under a data folder); each can be overridden by an environment
variable named ``RIS_<NAME>`` (upper case), or by keyword arguments in tests.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from config.outbound import Destination, parse_destinations

REPO_ROOT = Path(__file__).resolve().parent.parent


def _doc(text: str, default=dataclasses.MISSING, default_factory=dataclasses.MISSING):
    kwargs = {"metadata": {"doc": text}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return field(**kwargs)


@dataclass(frozen=True)
class Settings:
    """All settings of one engine process. Build with :func:`load_settings`."""

    data_dir: Path = _doc("Folder for the SQLite database and the archive (the engine logs to stderr).", Path("data"))
    host: str = _doc("Address every listener binds to (MLLP, DICOM, HTTP).", "127.0.0.1")
    mllp_port: int = _doc("TCP port of the HL7 v2 MLLP listener.", 2575)
    dicom_port: int = _doc("TCP port of the DICOM AE (echo, worklist, MPPS, storage).", 11112)
    dicom_aet: str = _doc("AE title of the engine's DICOM AE.", "RIS")
    http_port: int = _doc("TCP port of the HTTP side (health, JSON API, FHIR).", 8080)
    database_url: str = _doc(
        "SQLAlchemy URL; empty means SQLite at <data_dir>/ris.db. PostgreSQL: "
        "postgresql+psycopg://user@host:5432/db", ""
    )
    archive_dir: str = _doc("Folder of the DICOM archive; empty means <data_dir>/archive.", "")
    mappings_dir: str = _doc("Folder of the mapping profiles (*.yaml, re-read when they change); empty means the "
                             "shipped mappings/.", "")
    mapping_profile: str = _doc("Name of the mapping profile for senders no profile's 'senders' claims.", "default")
    hl7_application: str = _doc("Our MSH-3 (sending application) in ACKs and outbound messages.", "RIS")
    hl7_facility: str = _doc("Our MSH-4 (sending facility) in ACKs and outbound messages.", "RADIOLOGY")
    hl7_default_charset: str = _doc(
        "Python codec tried first for messages whose MSH-18 is empty (Latin-1 is the fallback).", "utf-8"
    )
    hl7_charset_mismatch: str = _doc(
        "When MSH-18 declares an 8859 set but the bytes are valid UTF-8: 'prefer-utf8' or 'declared'.",
        "prefer-utf8",
    )
    hl7_dedup_window_days: float = _doc(
        "A resent message (same sender, control id and content, MSH-7 aside) within this many days gets the "
        "original ACK.", 7.0
    )
    hl7_processing_ids: tuple[str, ...] = _doc(
        "MSH-11 processing ids (HL7 table 0103) whose messages are applied. D (debugging) is applied like P by "
        "default: senders label production traffic D (corpus: a 1994 RIS, the IHE PAM France samples), and "
        "SOURCES.md's right behaviour for them is to apply them; set P alone to refuse D.", ("P", "D"))
    hl7_training_processing_ids: tuple[str, ...] = _doc(
        "MSH-11 processing ids whose messages are checked and acknowledged like any other but never applied "
        "(nothing of them reaches patients, orders or the worklist; the message is stored). Ids in neither list "
        "are refused with AR, ERR code 202.", ("T",))
    hl7_versions: tuple[str, ...] = _doc(
        "MSH-12 versions accepted (major.minor: 2.3 covers 2.3.1); others, and an empty MSH-12, are refused "
        "with AR, ERR code 203.", ("2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8"))
    message_retention_days: float = _doc(
        "Processed, duplicate and rejected messages older than this are pruned daily (0 = keep all); "
        "messages in ERROR are kept unless RIS_MESSAGE_RETENTION_INCLUDE_ERRORS is on.", 90.0
    )
    message_retention_include_errors: bool = _doc(
        "Let the daily pruning delete messages in ERROR (never applied) older than RIS_MESSAGE_RETENTION_DAYS "
        "too.", False)
    hl7_max_message_size: int = _doc("Largest accepted HL7 message in bytes (larger: ACK AR).", 16 * 1024 * 1024)
    mllp_idle_timeout: float = _doc("Seconds an MLLP connection may stay silent before it is closed.", 600.0)
    mllp_frame_timeout: float = _doc(
        "Seconds a sender has to complete an MLLP frame once it started it; then the connection is closed.", 60.0)
    mllp_max_connections: int = _doc("Most simultaneous MLLP connections (more are closed at once).", 256)
    mllp_tls_cert: str = _doc("PEM certificate (chain) of the MLLP listener; set it to require TLS.", "")
    mllp_tls_key: str = _doc("PEM private key of the MLLP certificate (empty: in the certificate file).", "")
    mllp_tls_ca: str = _doc("PEM CA bundle; when set, MLLP clients must present a certificate it signed.", "")
    mllp_workers: int = _doc("Threads that apply HL7 messages (one connection's messages stay in order).", 32)
    hl7_group_commit: bool = _doc(
        "Commit the HL7 messages of concurrent connections together (one fsync for the group; each is still "
        "durable before its ACK). Off: one transaction per message.", True)
    site_timezone: str = _doc(
        "IANA zone of the department; HL7 times without an offset and DICOM times are in this zone.",
        "UTC",
    )
    uid_root: str = _doc("UID root for generated Study Instance UIDs and other UIDs.", "1.2.826.0.1.3680043.10.1356")
    worklist_statuses: tuple[str, ...] = _doc(
        "Procedure step statuses a modality sees in the worklist.", ("SCHEDULED", "ARRIVED", "READY")
    )
    worklist_max_results: int = _doc("Most C-FIND worklist answers per query (0 = no limit).", 0)
    worklist_names_case_insensitive: bool = _doc(
        "Match person names in worklist queries without regard to case (PS3.4 C.2.2.2.1 allows both).", False)
    worklist_filter_calling_aet: bool = _doc(
        "A modality sees only the steps scheduled on its own AE title (or on the stations its aliases name).",
        False)
    worklist_calling_aet_aliases: tuple[str, ...] = _doc(
        "With the calling AE filter: the station AE titles a calling AE also sees, comma separated "
        "CALLING_AET=STATION_AET|STATION_AET entries.", ())
    worklist_unassigned_station_aet: str = _doc(
        "Scheduled Station AE Title answered for a step scheduled on no station (the key is Type 1).",
        "UNASSIGNED")
    dicom_specific_character_set: str = _doc(
        "Character set of worklist answers: 'ISO_IR 192' (UTF-8) encodes every script.", "ISO_IR 192"
    )
    dicom_max_associations: int = _doc("Most simultaneous DICOM associations (more are rejected).", 32)
    dicom_known_aes: tuple[str, ...] = _doc(
        "Known DICOM AEs as AET=host:port, comma separated: C-MOVE destinations, storage commitment "
        "requesters, and the callers allowed when dicom_check_callers is on.", ()
    )
    dicom_check_callers: bool = _doc(
        "Accept associations only from a known AE title calling from its configured host.", False
    )
    dicom_check_called_aet: bool = _doc(
        "Reject an association whose Called AE Title is not dicom_aet (A-ASSOCIATE-RJ, reason 7: called AE title "
        "not recognised, PS3.8 9.3.4). Off by default, as wlmscpfs and Orthanc: modalities are often set up "
        "with another title for the same server.", False
    )
    dicom_resent_instance: str = _doc(
        "C-STORE of a SOP Instance UID already archived: 'replace' the file and index entry, 'ignore' it "
        "(success, nothing written) or 'reject' it (0111 Duplicate SOP Instance).", "replace"
    )
    dicom_accession_studies: str = _doc(
        "Several studies of one patient name the same order (accession number or SPS ID, BUG-27): 'link-all' links "
        "each and reports the order as having several studies; 'flag' links none of them automatically (each is "
        "AMBIGUOUS until a person links it).", "link-all"
    )
    dicom_coerce_on_store: bool = _doc(
        "Coerce patient and order attributes of a received instance from the order it links to before it is "
        "written (originals kept in the Original Attributes Sequence; C-STORE answers B000).", False
    )
    dicom_coerce_on_retrieve: bool = _doc(
        "Send archived instances (C-MOVE, C-GET, forwarding, WADO) with the patient and order attributes of the "
        "archive index (after merges and manual links); files stay as received.", True
    )
    dicom_forward: tuple[str, ...] = _doc(
        "AE titles (of dicom_known_aes) every received instance is forwarded to by C-STORE, from the outbox "
        "with retry; an instance is never sent back to the AE it came from.", ()
    )
    reconciliation_window_hours: float = _doc(
        "Candidates for an unmatched study: orders of the same patient with a step scheduled within this many "
        "hours of the study's date and time rank higher.", 24.0
    )
    outbound_destinations: tuple[str, ...] = _doc(
        "Outbound destinations, comma separated: name=host:port[;enabled=false][;message=OMG^O19]"
        "[;application=APP][;facility=FAC][;kinds=order.status] (see config/outbound.py).", ()
    )
    his_mllp: str = _doc("host:port of the HIS's MLLP listener: shorthand for the destination 'his'.", "")
    outbound_order_message: str = _doc(
        "Order status message to the HIS (IHE RAD-3): ORM^O01 or OMG^O19 (a destination may choose its own).",
        "ORM^O01",
    )
    outbox_poll_seconds: float = _doc("Seconds between outbox dispatch runs.", 2.0)
    outbox_timeout: float = _doc("Seconds to connect and to receive each message's ACK.", 10.0)
    outbox_max_attempts: int = _doc("Attempts before a transiently failing message is dead-lettered.", 10)
    outbox_backoff_seconds: float = _doc("Delay after the first failed attempt; doubled after each next one.", 5.0)
    outbox_backoff_max_seconds: float = _doc("Longest delay between two attempts.", 600.0)
    scheduler_enabled: bool = _doc("Run the scheduled jobs in this process.", True)
    resources_dir: str = _doc("Folder of the scheduling resources (rooms, modalities: *.yaml, see mappings/resources.py), "
                              "loaded at start; empty means <mappings_dir>/resources.", "")
    noshow_after_minutes: float = _doc("A scheduled procedure whose patient has not arrived this many minutes after its "
                                       "start (and after it reached the worklist) is marked no-show (back to "
                                       "ORDERED, its booking freed); 0 = never, the default: a site's policy to "
                                       "opt into (e.g. 60).", 0.0)
    worklist_stale_hours: tuple[str, ...] = _doc(
        "Stale worklist housekeeping: STATUS=hours, comma separated; a step left in STATUS that long after its "
        "scheduled start is discontinued and leaves the worklist.", ("SCHEDULED=168", "ARRIVED=24", "READY=24",
                                                                      "UNSCHEDULED=720"))
    auth_required: bool = _doc(
        "The JSON API and FHIR answer only a signed-in user (401 otherwise) with a role that may use them (403). "
        "The web pages always require signing in.", False)
    api_token: str = _doc("A bearer token (Authorization: Bearer ...) the JSON API and FHIR accept when "
                          "RIS_AUTH_REQUIRED is on, for automation; empty: none.", "")
    api_token_role: str = _doc("The role of RIS_API_TOKEN (technologist, scheduler, radiologist, analyst, "
                               "administrator).", "analyst")
    secret_key: str = _doc("Key that signs the web session cookies; empty: a random key kept in "
                           "<data_dir>/secret_key (shared by every process on that folder).", "")
    session_idle_minutes: float = _doc("A web session ends after this many minutes without a request.", 30.0)
    cookie_secure: bool = _doc("Send the session cookie only over HTTPS (set it behind a TLS proxy).", False)
    log_level: str = _doc("Python logging level.", "INFO")

    # Derived paths -------------------------------------------------------------------------
    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(Path(self.data_dir) / 'ris.db').resolve()}"

    @property
    def archive_path(self) -> Path:
        return Path(self.archive_dir) if self.archive_dir else Path(self.data_dir) / "archive"

    @property
    def destinations(self) -> tuple[Destination, ...]:
        """The outbound destinations (``outbound_destinations`` plus ``his_mllp``), parsed."""
        try:
            return parse_destinations(self.outbound_destinations, self.his_mllp,
                                      default_message=self.outbound_order_message)
        except ValueError as exc:
            raise SettingsError(f"RIS_OUTBOUND_DESTINATIONS / RIS_HIS_MLLP: {exc}") from None

    @property
    def mappings_path(self) -> Path:
        return Path(self.mappings_dir) if self.mappings_dir else REPO_ROOT / "mappings"

    @property
    def resources_path(self) -> Path:
        return Path(self.resources_dir) if self.resources_dir else self.mappings_path / "resources"

    @property
    def worklist_stale_after(self) -> dict[str, float]:
        """``worklist_stale_hours`` as {step status: hours}."""
        table = {}
        for item in self.worklist_stale_hours:
            status, sep, hours = item.partition("=")
            try:
                table[status.strip().upper()] = float(hours)
            except ValueError:
                raise SettingsError(f"RIS_WORKLIST_STALE_HOURS: {item!r} is not STATUS=hours") from None
            if not sep or table[status.strip().upper()] <= 0:
                raise SettingsError(f"RIS_WORKLIST_STALE_HOURS: {item!r} is not STATUS=hours (hours > 0)")
        return table


def parse_flag(raw: str) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off/empty (any case); ValueError otherwise."""
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def _convert(name: str, raw: str, kind):
    try:
        if kind is bool:
            return parse_flag(raw)
        if kind in (int, float, str, Path):
            return kind(raw)
        if kind == tuple[str, ...]:
            return tuple(v.strip() for v in raw.split(",") if v.strip())
    except ValueError:
        raise SettingsError(f"RIS_{name.upper()}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None
    raise SettingsError(f"no conversion for setting {name}")


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def load_settings(env: dict | None = None, **overrides) -> Settings:
    """Defaults, then ``RIS_*`` environment variables, then keyword overrides (tests)."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(Settings)
    values = {}
    for f in fields(Settings):
        key = f"RIS_{f.name.upper()}"
        if key in env:
            values[f.name] = _convert(f.name, env[key], hints[f.name])
    values.update(overrides)
    return Settings(**values)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, documentation) for every setting: for the README and ``ris settings``."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        rows.append((f"RIS_{f.name.upper()}", str(default), f.metadata.get("doc", "")))
    return rows
