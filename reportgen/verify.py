"""`reportgen verify`: check a built site or an archival PDF against its own records.

A site is checked against `data/checksums.sha256` (every file, the PDF and the
manifest included) and `data/manifest.json` (every output but itself and the
PDF): any changed, missing or extra file is a problem. The inputs (spec,
checkpoint, images, masks) are re-hashed when they can still be found where the
manifest says (the spec relative to the site, the rest relative to the spec); an
input that cannot be found is only noted, since an archived site often travels
without them.

Nothing outside the site and the declared inputs is read: a link leaving the site
is a problem (named with where it points), never followed; an input is read only
when it is a regular file (an smp save_pretrained checkpoint: a folder of at most
`FOLDER_ENTRIES_MAX` entries), and a folder, device, named pipe or link loop where
the manifest records a file is an unreadable input. Every field read from a
manifest is checked for its type in one place (`read_manifest`): one of the wrong
shape makes the manifest a changed file, never a crash.

A PDF is checked against the manifest embedded in it: the spec and
`metrics.csv` attachments must hash to the manifest's records, and every
attachment to the MD5 the PDF stores for it. A signed PDF's signature is
validated (with pyHanko, the `sign` extra): a change after signing is a problem.

    report = verify(Path("site"))      # or Path("site/report.pdf")
    report.ok, report.problems, report.to_dict()
"""

from __future__ import annotations

import codecs
import hashlib
import importlib.util
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError

from reportgen.errors import UserError
from reportgen.hashing import sha256_file
from reportgen.manifest import CHECKSUMS, MANIFEST, parse_checksums

MANIFEST_ATTACHMENT = "manifest.json"
METRICS_ATTACHMENT = "metrics.csv"
METRICS_OUTPUT = "data/metrics.csv"


@dataclass(frozen=True)
class Finding:
    """One problem: the file (relative to the site, or an attachment name) and what is wrong."""

    path: str
    problem: str  # changed | missing | extra | input changed | attachment ... | signature ...
    detail: str = ""


@dataclass
class SignatureState:
    """What the PDF's signature says, if it has one."""

    status: str  # unsigned | valid | modified | invalid | unchecked
    signer: str = ""
    signed_at: str = ""
    detail: str = ""


@dataclass
class VerifyReport:
    """The outcome of `verify`: ok when nothing changed, went missing or appeared."""

    target: str
    kind: str  # site | pdf
    checked: int = 0
    problems: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signature: SignatureState | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def verify(path: Path) -> VerifyReport:
    """Verify a site folder or a PDF; UserError when it is neither a report nor a PDF."""
    path = Path(path)
    if path.is_dir():
        return verify_site(path)
    if path.is_file() and path.suffix.lower() == ".pdf":
        return verify_pdf(path)
    raise UserError(f"{path}: not a report site folder or a PDF")


class _Recorded(BaseModel):
    """An input as the manifest records it: the fields `verify` reads, each of its type
    (strict: a number is not taken for a path)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    path: str | None = None
    sha256: str | None = None
    location: str | None = None


class _RecordedCheckpoint(_Recorded):
    format: str | None = None


class _RecordedImage(_Recorded):
    id: str = "?"
    mask_sha256: str | None = None
    mask_location: str | None = None


class _RecordedInputs(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    spec: _Recorded | None = None
    checkpoint: _RecordedCheckpoint | None = None
    images: list[_RecordedImage] | None = None


class RecordedManifest(BaseModel):
    """What `verify` reads of a manifest (`manifest.write_manifest` writes the whole)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    outputs: dict[str, str] = {}
    pdf: str | None = None
    inputs: _RecordedInputs | None = None


class _Unreadable(Exception):
    """A file that is there but cannot be taken for what the records say (the message
    says why)."""


class NotAManifest(ValueError):
    """The bytes are not a reportgen manifest; the message says where and why."""


def read_manifest(data: bytes) -> RecordedManifest:
    """The manifest in `data`, every field `verify` reads checked for its type in this one
    place; NotAManifest naming the first field of the wrong shape."""
    try:
        return RecordedManifest.model_validate_json(data)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise NotAManifest(f"not readable JSON ({first['msg'].removeprefix('Invalid JSON: ')})"
                               ) from None
        where = ".".join(str(key) for key in first["loc"]) or "the whole manifest"
        found = json.dumps(first["input"])
        found = found if len(found) <= 40 else found[:37] + "..."
        raise NotAManifest(f"not a reportgen manifest ({where}: {first['msg'].lower()}, "
                           f"not {found})") from None


@dataclass
class _SiteTree:
    """What a site folder holds, found without following a link out of it: its regular
    files and links to one inside it (paths relative to the site), the links leaving it
    (-> where they point) and anything else (-> what it is)."""

    files: set[str] = field(default_factory=set)
    links_out: dict[str, str] = field(default_factory=dict)
    oddities: dict[str, str] = field(default_factory=dict)

    def beyond_a_link_out(self, name: str) -> bool:
        return any(name == link or name.startswith(f"{link}/") for link in self.links_out)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _classify(path: Path, root: Path) -> tuple[str, str]:
    """(file | folder | out | odd, what it is) for one entry of the site (`root` resolved)."""
    if not path.is_symlink():
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            return "folder", ""
        return ("file", "") if stat.S_ISREG(mode) else ("odd", "not a regular file")
    target = Path(os.path.realpath(path))
    if not _inside(target, root):
        return "out", f"points to {target}"
    try:
        mode = path.stat().st_mode
    except OSError as error:
        return "odd", f"a link that leads nowhere ({error.strerror})"
    if stat.S_ISREG(mode):
        return "file", ""  # as sha256sum -c reads it, and it stays inside the site
    return "odd", f"a link to {target.relative_to(root).as_posix() or '.'} of the site"


def _walk_site(site: Path) -> _SiteTree:
    root = site.resolve()
    tree = _SiteTree()
    for folder, folders, names in os.walk(root):  # never descends a link to a folder
        for name in [*folders, *names]:
            path = Path(folder, name)
            kind, detail = _classify(path, root)
            relative = path.relative_to(root).as_posix()
            if kind == "file":
                tree.files.add(relative)
            elif kind == "out":
                tree.links_out[relative] = detail.removeprefix("points to ")
            elif kind == "odd":
                tree.oddities[relative] = detail
    return tree


def _load_manifest(site: Path, tree: _SiteTree) -> RecordedManifest:
    path = site / MANIFEST
    if MANIFEST.as_posix() not in tree.files:
        raise UserError(f"{site}: not a reportgen site (no {MANIFEST.as_posix()})")
    try:
        manifest = read_manifest(path.read_bytes())
    except OSError as error:
        raise UserError(f"{path}: not a readable manifest ({error})") from None
    except NotAManifest as error:
        raise UserError(f"{path}: {error}") from None
    if "outputs" not in manifest.model_fields_set:
        raise UserError(f"{path}: not a reportgen manifest (no outputs)")
    return manifest


def _read_checksums(site: Path, tree: _SiteTree, report: VerifyReport) -> dict[str, str] | None:
    """The site's checksums (path -> sha256), or None (reported) when missing or unreadable."""
    name = CHECKSUMS.as_posix()
    if name not in tree.files:
        report.problems.append(Finding(name, "missing"))
        return None
    try:
        return _decode_checksums((site / CHECKSUMS).read_bytes())
    except _Unreadable as error:
        report.problems.append(Finding(name, "changed", str(error)))
    except OSError as error:
        report.problems.append(Finding(name, "changed", f"not readable ({error.strerror})"))
    return None


def _decode_checksums(data: bytes) -> dict[str, str]:
    """The path -> sha256 pairs of a checksums file; _Unreadable when it is not UTF-8."""
    try:
        return parse_checksums(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _Unreadable(f"not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                          f"{error.start})") from None


def _manifest_in_pdf(site: Path, tree: _SiteTree, listed: dict[str, str] | None
                     ) -> tuple[RecordedManifest | None, PdfReport | None]:
    """The manifest attached to the site's one PDF (as listed in the checksums), if it
    reads (its "pdf" names that PDF), and that PDF's report, so it is read once."""
    pdfs = [name for name in listed or {} if name.lower().endswith(".pdf")]
    if len(pdfs) != 1 or pdfs[0] not in tree.files:
        return None, None
    try:
        inner = verify_pdf(site / pdfs[0], within_site=True)
    except UserError:  # unreadable: the site's own check reports the PDF as changed
        return None, None
    try:
        manifest = read_manifest(inner.attachments_manifest or b"")
    except NotAManifest:
        return None, inner
    if "outputs" not in manifest.model_fields_set:
        return None, inner
    return manifest.model_copy(update={"pdf": pdfs[0]}), inner


def verify_site(site: Path) -> VerifyReport:
    """Re-hash every file of `site` and every reachable input against the records.

    A manifest that no longer reads (one changed byte can break its JSON) is itself a
    changed output; the records are then the manifest attached to the site's PDF, or
    `data/checksums.sha256` alone where there is none. A link that leaves the site is
    a problem of its own and is never followed; where the records lie beyond one,
    nothing else is checked.
    """
    report = VerifyReport(str(site), "site")
    tree = _walk_site(site)
    report.problems += [Finding(name, "link out of the site", f"points to {target}")
                        for name, target in sorted(tree.links_out.items())]
    if tree.beyond_a_link_out(MANIFEST.as_posix()) or tree.beyond_a_link_out(
            CHECKSUMS.as_posix()):
        report.notes.append("the site's records lie beyond a link out of it; nothing "
                            "else checked")
        return report
    listed = _read_checksums(site, tree, report)
    manifest, broken, read_pdf = _site_records(site, tree, listed, report)
    expected = _expected_hashes(site, tree, manifest, listed, broken, report)
    _check_files(site, tree, expected, report)
    _verify_inputs(site, manifest, report)
    _check_the_site_pdf(site, tree, manifest, read_pdf, report)
    return report


def _site_records(site: Path, tree: _SiteTree, listed: dict[str, str] | None,
                  report: VerifyReport) -> tuple[RecordedManifest, bool, PdfReport | None]:
    """The manifest to check against, whether the site's own is broken, and the PDF's
    report when it was read for its manifest."""
    try:
        return _load_manifest(site, tree), False, None
    except UserError as error:
        if MANIFEST.as_posix() not in tree.files or CHECKSUMS.as_posix() not in tree.files:
            raise
        reason = str(error).removeprefix(f"{site / MANIFEST}: ")
        report.problems.append(Finding(MANIFEST.as_posix(), "changed", reason))
    manifest, read_pdf = _manifest_in_pdf(site, tree, listed)
    if manifest is None:
        report.notes.append(f"the other files checked against {CHECKSUMS.as_posix()} alone")
        return RecordedManifest(), True, read_pdf
    report.notes.append(f"the records are the manifest attached to {manifest.pdf}")
    return manifest, True, read_pdf


def _expected_hashes(site: Path, tree: _SiteTree, manifest: RecordedManifest,
                     listed: dict[str, str] | None, broken: bool,
                     report: VerifyReport) -> dict[str, str | None]:
    """Every file the records name -> its sha256 (None: present, but not hashed here)."""
    expected: dict[str, str | None] = dict(manifest.outputs)
    if listed is None:  # missing or unreadable, as reported: the manifest is the record
        expected[MANIFEST.as_posix()] = None
        if manifest.pdf:
            expected[manifest.pdf] = None
        return expected
    for name, digest in listed.items():
        if name in expected and expected[name] != digest:
            if name in tree.files and sha256_file(site / name) == expected[name]:
                # the file is as the manifest records it: the checksums line changed
                report.problems.append(Finding(
                    CHECKSUMS.as_posix(), "changed",
                    f"its line for {name} differs from the manifest, which the file matches"))
                continue
            report.problems.append(Finding(name, "changed", "the manifest and "
                                           f"{CHECKSUMS.as_posix()} disagree"))
        expected[name] = digest
    if broken:
        expected[MANIFEST.as_posix()] = None  # reported already
    return expected


def _check_files(site: Path, tree: _SiteTree, expected: dict[str, str | None],
                 report: VerifyReport) -> None:
    for name in sorted(expected):
        if name not in tree.files:
            if not tree.beyond_a_link_out(name):  # a link out is reported as such
                report.problems.append(Finding(name, "missing", tree.oddities.get(name, "")))
            continue
        report.checked += 1
        digest = expected[name]
        if digest is not None and sha256_file(site / name) != digest:
            report.problems.append(Finding(name, "changed", "sha256 differs from the record"))
    for name in sorted(tree.files - set(expected) - {CHECKSUMS.as_posix()}):
        report.problems.append(Finding(name, "extra", "not in the records"))
    for name in sorted(set(tree.oddities) - set(expected)):
        report.problems.append(Finding(name, "extra", f"{tree.oddities[name]}; not in the "
                                       "records"))


def _check_the_site_pdf(site: Path, tree: _SiteTree, manifest: RecordedManifest,
                        read_pdf: PdfReport | None, report: VerifyReport) -> None:
    pdf_name = manifest.pdf
    if not pdf_name or pdf_name not in tree.files:
        return  # a PDF that is not there is reported missing with the other files
    try:
        inner = read_pdf if read_pdf is not None else verify_pdf(site / pdf_name,
                                                                 within_site=True)
    except UserError as error:  # a damaged PDF in a site is a changed file of it
        if not any(f.path == pdf_name for f in report.problems):
            report.problems.append(Finding(pdf_name, "changed", str(error)))
        return
    report.problems += [Finding(f"{pdf_name}:{f.path}", f.problem, f.detail)
                        for f in inner.problems]
    report.notes += [f"{pdf_name}: {note}" for note in inner.notes]
    report.signature = inner.signature
    site_manifest = (site / MANIFEST).read_bytes()
    if inner.attachments_manifest is not None and inner.attachments_manifest != site_manifest:
        report.problems.append(Finding(f"{pdf_name}:{MANIFEST_ATTACHMENT}", "changed",
                                       "differs from the site's data/manifest.json"))


# An smp save_pretrained checkpoint is a folder of a few files (config, weights, a
# README); the name is the one `models.checkpoints.FORMATS` records in the manifest.
PRETRAINED_FOLDER = "smp save_pretrained folder"
FOLDER_ENTRIES_MAX = 100


def _regular_file_digest(path: Path) -> str:
    # O_NONBLOCK: a named pipe put there after the check must not stall the read
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise _Unreadable("not a regular file")
        digest = hashlib.sha256()
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    """`hashing.sha256_path` of a checkpoint folder, as the build took it (its regular
    files, links to folders not descended), refusing a folder of more entries than a
    save_pretrained folder holds before reading any file."""
    children: list[Path] = []
    entries = 0
    for parent, folders, names in os.walk(folder):
        entries += len(folders) + len(names)
        if entries > FOLDER_ENTRIES_MAX:
            raise _Unreadable(f"a folder of more than {FOLDER_ENTRIES_MAX} entries, where the "
                              f"manifest records an {PRETRAINED_FOLDER} (a few files)")
        children += [Path(parent, name).relative_to(folder) for name in names
                     if Path(parent, name).is_file()]
    digest = hashlib.sha256()
    for child in sorted(children):
        digest.update(f"{child.as_posix()}\0{_regular_file_digest(folder / child)}\n".encode())
    return digest.hexdigest()


def _input_digest(path: Path, folder_allowed: bool) -> str:
    """sha256 of a declared input, reading only a regular file (or a bounded checkpoint
    folder); FileNotFoundError when it is not there, _Unreadable when it is not a file."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except OSError as error:  # a link loop, no permission
        raise _Unreadable(error.strerror or str(error)) from None
    if stat.S_ISDIR(mode):
        if not folder_allowed:
            raise _Unreadable("a folder, where the manifest records a file")
        return _folder_digest(path)
    if not stat.S_ISREG(mode):
        raise _Unreadable("not a regular file (a device, a named pipe or a socket)")
    return _regular_file_digest(path)


def _check_input(report: VerifyReport, label: str, path: Path, digest: str | None,
                 folder_allowed: bool = False) -> bool:
    """Re-hash one input against its record; False when it is there but cannot be read."""
    if not digest:
        return True
    try:
        found = _input_digest(path, folder_allowed)
    except FileNotFoundError:
        report.notes.append(f"{label} not found at {path}; not checked")
        return True
    except (_Unreadable, OSError) as error:
        report.problems.append(Finding(str(path), "input unreadable", f"{label}: {error}"))
        return False
    report.checked += 1
    if found != digest:
        report.problems.append(Finding(str(path), "input changed",
                                       f"{label}: sha256 differs from the manifest"))
    return True


def _verify_inputs(site: Path, manifest: RecordedManifest, report: VerifyReport) -> None:
    inputs = manifest.inputs or _RecordedInputs()
    spec = inputs.spec or _Recorded()
    if not spec.location:
        report.notes.append("the manifest records no input locations; inputs not checked")
        return
    spec_path = site / spec.location
    try:
        spec_path.stat()
    except (FileNotFoundError, NotADirectoryError):
        report.notes.append(f"spec not found at {spec_path}; inputs not checked")
        return
    except OSError:
        pass  # there, but unreadable: reported as such below
    if not _check_input(report, "spec", spec_path, spec.sha256):
        return
    base = Path(os.path.realpath(spec_path)).parent
    checkpoint = inputs.checkpoint or _RecordedCheckpoint()
    if checkpoint.location:
        _check_input(report, "checkpoint", base / checkpoint.location, checkpoint.sha256,
                     folder_allowed=checkpoint.format == PRETRAINED_FOLDER)
    for image in inputs.images or []:
        if image.location:
            _check_input(report, f"image {image.id}", base / image.location, image.sha256)
        if image.mask_location:
            _check_input(report, f"mask of {image.id}", base / image.mask_location,
                         image.mask_sha256)


@dataclass
class PdfReport(VerifyReport):
    """A PDF's report, with the manifest it carries (for the site check)."""

    attachments_manifest: bytes | None = None

    def to_dict(self) -> dict[str, object]:
        data = super().to_dict()
        data.pop("attachments_manifest", None)
        return data


def verify_pdf(pdf: Path, within_site: bool = False) -> PdfReport:
    """Check the PDF's attachments against its embedded manifest, and its signature; an
    unsigned PDF's whole file against its site's checksums, when it lies in a site
    (`within_site`: the caller checks the site, and with it the PDF's file, itself)."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    report = PdfReport(str(pdf), "pdf")
    pypdf_log = logging.getLogger("pypdf")
    level = pypdf_log.level
    pypdf_log.setLevel(logging.ERROR)  # its repair notes ("EOF marker not found"): ours say it
    try:
        reader = PdfReader(pdf)
        attachments = {a.name: a for a in reader.attachment_list}
    except (PdfReadError, OSError, ValueError, KeyError) as error:
        record = None if within_site else _site_record(pdf)
        if record is None or record.digest is None:
            raise UserError(f"{pdf}: not a readable PDF ({error})") from None
        # a file of its site that no longer reads: changed, as `verify SITE` says
        report.problems.append(Finding(record.path, "changed", f"not a readable PDF ({error})"))
        return report
    finally:
        pypdf_log.setLevel(level)
    if MANIFEST_ATTACHMENT not in attachments:
        raise UserError(f"{pdf}: not a reportgen report (no embedded {MANIFEST_ATTACHMENT})")
    contents = _attachment_contents(attachments, report)
    report.attachments_manifest = contents[MANIFEST_ATTACHMENT]
    try:
        manifest = read_manifest(contents[MANIFEST_ATTACHMENT])
    except NotAManifest as error:
        report.problems.append(Finding(MANIFEST_ATTACHMENT, "attachment changed", str(error)))
        return report
    spec = (manifest.inputs.spec if manifest.inputs else None) or _Recorded()
    expected = {spec.path or "spec": spec.sha256,
                METRICS_ATTACHMENT: manifest.outputs.get(METRICS_OUTPUT)}
    for name, digest in expected.items():
        if name not in contents:
            report.problems.append(Finding(name, "missing", "attachment not in the PDF"))
        elif digest and hashlib.sha256(contents[name]).hexdigest() != digest:
            report.problems.append(Finding(name, "attachment changed",
                                           "sha256 differs from the embedded manifest"))
    for name in sorted(set(contents) - set(expected) - {MANIFEST_ATTACHMENT}):
        report.problems.append(Finding(name, "extra", "attachment not in the records"))
    report.signature = signature_state(pdf)
    if report.signature.status in ("modified", "invalid"):
        report.problems.append(Finding("signature", f"signature {report.signature.status}",
                                       report.signature.detail))
    elif report.signature.status == "unchecked":
        report.notes.append(report.signature.detail)
    elif report.signature.status == "unsigned" and not within_site:
        _check_pages_against_the_site(pdf, report)
    return report


def _attachment_contents(attachments: dict, report: PdfReport) -> dict[str, bytes]:
    """Each attachment's bytes by name, each checked against the MD5 stored with it."""
    contents: dict[str, bytes] = {}
    for name, attachment in sorted(attachments.items()):
        data = attachment.content
        contents[name] = data
        report.checked += 1
        stored = _raw_bytes(attachment.checksum, MD5_BYTES)
        if stored is not None and stored.hex() != hashlib.md5(
                data, usedforsecurity=False).hexdigest():
            report.problems.append(Finding(name, "attachment changed",
                                           "content differs from the MD5 stored with it"))
    return contents


class _SiteRecord(NamedTuple):
    """The PDF's path in its site, the sha256 the site's checksums record for it (None if
    they list it not), and why those checksums cannot be read, if they cannot."""

    path: str
    digest: str | None
    unreadable: str = ""


def _site_record(pdf: Path) -> _SiteRecord | None:
    """What the PDF's site records of it, or None when the PDF lies in no site."""
    for site in pdf.resolve().parents:
        checksums = site / CHECKSUMS
        if not checksums.is_file():
            continue
        relative = pdf.resolve().relative_to(site).as_posix()
        try:
            listed = _decode_checksums(checksums.read_bytes())
        except OSError as error:
            return _SiteRecord(relative, None, f"not readable ({error.strerror})")
        except _Unreadable as error:
            return _SiteRecord(relative, None, str(error))
        return _SiteRecord(relative, listed.get(relative))
    return None


def _check_pages_against_the_site(pdf: Path, report: PdfReport) -> None:
    """An unsigned PDF's pages have no record inside it: compare the whole file with the
    sha256 its site recorded, when it lies in one, and say so when it does not."""
    record = _site_record(pdf)
    if record is None:
        report.notes.append("unsigned and outside its site: only the attachments were "
                            "checked; the pages are covered by a signature (build --sign) or "
                            f"by the site's {CHECKSUMS.as_posix()}")
        return
    relative, digest, unreadable = record
    if unreadable:
        report.problems.append(Finding(CHECKSUMS.as_posix(), "changed", f"{unreadable}; "
                                       "the PDF's pages cannot be checked against it"))
        return
    if digest is None:
        report.problems.append(Finding(relative, "extra", f"not in its site's "
                                       f"{CHECKSUMS.as_posix()}"))
        return
    report.checked += 1
    if sha256_file(pdf) != digest:
        report.problems.append(Finding(relative, "changed", f"sha256 differs from "
                                       f"{CHECKSUMS.as_posix()} of its site"))
    else:
        report.notes.append(f"unsigned: the whole file checked against its site's "
                            f"{CHECKSUMS.as_posix()}")


MD5_BYTES = 16
_BYTE_ORDER_MARKS = (codecs.BOM_UTF16_BE, codecs.BOM_UTF16_LE)


def _raw_bytes(value: object, length: int | None = None) -> bytes | None:
    """The bytes of a PDF string as stored (pypdf decodes them to text).

    pypdf takes some binary strings for UTF-16 text (about 1 MD5 digest in 200, e.g.
    one starting with a zero byte) and gives them back with a byte-order mark in
    front; a string known to hold `length` bytes loses that mark again, or every such
    attachment would read as changed."""
    if value is None:
        return None
    if hasattr(value, "get_original_bytes"):
        raw = value.get_original_bytes()
    else:
        raw = bytes(value) if isinstance(value, bytes) else str(value).encode("latin-1")
    if length is not None and len(raw) == length + 2 and raw[:2] in _BYTE_ORDER_MARKS:
        raw = raw[2:]
    return raw


def signature_state(pdf: Path) -> SignatureState:
    """The state of the PDF's last signature: unsigned, valid, modified or invalid
    (unchecked when pyHanko, the `sign` extra, is not installed)."""
    data = pdf.read_bytes()
    if b"/ByteRange" not in data:
        return SignatureState("unsigned")
    if importlib.util.find_spec("pyhanko") is None:  # the optional `sign` extra
        return SignatureState("unchecked", detail="the PDF is signed; install reportgen[sign] "
                              "(pyHanko) to check the signature")
    return _validated_signature(pdf)


def _validated_signature(pdf: Path) -> SignatureState:
    """The state of the last signature of `pdf`, checked with pyHanko.

    valid: the signed bytes are intact and cover the whole file; modified: bytes
    changed or were appended after signing; invalid: the signature itself does not
    check. Whether the signer is trusted is reported in the detail (a self-signed
    certificate is valid but not trusted).
    """
    # pyHanko is the optional `sign` extra: imported only for a signed PDF
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.errors import SignatureValidationError
    from pyhanko.sign.validation.status import SignatureCoverageLevel
    from pyhanko_certvalidator import ValidationContext

    with pdf.open("rb") as f:
        try:
            reader = PdfFileReader(f, strict=False)
            signatures = reader.embedded_signatures
        except Exception as error:  # pyHanko raises many types on damaged files
            return SignatureState("invalid", detail=f"the signature cannot be read: {error}")
        if not signatures:
            return SignatureState("unsigned")
        signature = signatures[-1]
        try:
            context = ValidationContext(trust_roots=[], allow_fetching=False)
            status = validate_pdf_signature(signature, context)
        except (SignatureValidationError, ValueError) as error:
            return SignatureState("invalid", detail=str(error))
        signer = status.signing_cert.subject.human_friendly if status.signing_cert else ""
        when = status.signer_reported_dt.isoformat() if status.signer_reported_dt else ""
        trust = "trusted" if status.trusted else "signer not trusted here (self-signed or " \
                                                 "unknown authority)"
        if not status.intact or not status.valid:
            return SignatureState("modified" if not status.intact else "invalid", signer, when,
                                  "the signed bytes do not match the signature")
        if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
            return SignatureState("modified", signer, when,
                                  f"the file was changed after signing ({status.coverage.name})")
        return SignatureState("valid", signer, when, f"intact, covers the whole file; {trust}")
