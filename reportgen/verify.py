"""`reportgen verify`: check a built site or an archival PDF against its own records.

A site is checked against `data/checksums.sha256` (every file, the PDF and the
manifest included) and `data/manifest.json` (every output but itself and the
PDF): any changed, missing or extra file is a problem. The inputs (spec,
checkpoint, images, masks) are re-hashed when they can still be found where the
manifest says (the spec relative to the site, the rest relative to the spec); an
input that cannot be found is only noted, since an archived site often travels
without them.

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
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from reportgen.errors import UserError
from reportgen.hashing import sha256_file, sha256_path
from reportgen.manifest import CHECKSUMS, MANIFEST, parse_checksums, site_files

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


def _load_manifest(site: Path) -> dict:
    path = site / MANIFEST
    if not path.is_file():
        raise UserError(f"{site}: not a reportgen site (no {MANIFEST.as_posix()})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        raise UserError(f"{path}: not a reportgen manifest (no outputs)")
    return manifest


def _manifest_in_pdf(site: Path) -> tuple[dict | None, PdfReport | None]:
    """The manifest attached to the site's one PDF (as listed in the checksums), if it
    reads (its "pdf" names that PDF), and that PDF's report, so it is read once."""
    listed = parse_checksums((site / CHECKSUMS).read_text(encoding="utf-8"))
    pdfs = [name for name in listed if name.lower().endswith(".pdf")]
    if len(pdfs) != 1 or not (site / pdfs[0]).is_file():
        return None, None
    try:
        inner = verify_pdf(site / pdfs[0], within_site=True)
    except UserError:  # unreadable: the site's own check reports the PDF as changed
        return None, None
    attached = inner.attachments_manifest
    try:
        manifest = json.loads(attached) if attached is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, inner
    if not isinstance(manifest, dict) or not isinstance(manifest.get("outputs"), dict):
        return None, inner
    return {**manifest, "pdf": pdfs[0]}, inner


def verify_site(site: Path) -> VerifyReport:
    """Re-hash every file of `site` and every reachable input against the records.

    A manifest that no longer reads (one changed byte can break its JSON) is itself a
    changed output; the records are then the manifest attached to the site's PDF, or
    `data/checksums.sha256` alone where there is none.
    """
    report = VerifyReport(str(site), "site")
    broken = False
    read_pdf: PdfReport | None = None  # the PDF's report, when already read
    try:
        manifest = _load_manifest(site)
    except UserError as error:
        if not (site / MANIFEST).is_file() or not (site / CHECKSUMS).is_file():
            raise
        broken = True
        report.problems.append(Finding(MANIFEST.as_posix(), "changed",
                                       "no longer a readable manifest"))
        manifest, read_pdf = _manifest_in_pdf(site)
        if manifest is None:
            manifest = {"outputs": {}}
            report.notes.append(f"{error}; the other files checked against "
                                f"{CHECKSUMS.as_posix()} alone")
        else:
            report.notes.append(f"{error}; the records are the manifest attached to "
                                f"{manifest['pdf']}")
    expected: dict[str, str | None] = dict(manifest["outputs"])
    checksums_path = site / CHECKSUMS
    if checksums_path.is_file():
        listed = parse_checksums(checksums_path.read_text(encoding="utf-8"))
        for name, digest in listed.items():
            if name in expected and expected[name] != digest:
                if (site / name).is_file() and sha256_file(site / name) == expected[name]:
                    # the file is as the manifest records it: the checksums line changed
                    report.problems.append(Finding(
                        CHECKSUMS.as_posix(), "changed",
                        f"its line for {name} differs from the manifest, which the file "
                        "matches"))
                    continue
                report.problems.append(Finding(name, "changed", "the manifest and "
                                               f"{CHECKSUMS.as_posix()} disagree"))
            expected[name] = digest
        if broken:
            expected[MANIFEST.as_posix()] = None  # reported above
    else:
        report.problems.append(Finding(CHECKSUMS.as_posix(), "missing"))
        expected[MANIFEST.as_posix()] = None
        if manifest.get("pdf"):
            expected[manifest["pdf"]] = None
    present = set(site_files(site))
    for name in sorted(expected):
        if name not in present:
            report.problems.append(Finding(name, "missing"))
            continue
        report.checked += 1
        digest = expected[name]
        if digest is not None and sha256_file(site / name) != digest:
            report.problems.append(Finding(name, "changed", "sha256 differs from the record"))
    for name in sorted(present - set(expected) - {CHECKSUMS.as_posix()}):
        report.problems.append(Finding(name, "extra", "not in the records"))
    _verify_inputs(site, manifest, report)
    pdf_name = manifest.get("pdf")
    if pdf_name and (site / pdf_name).is_file():
        try:
            inner = (read_pdf if read_pdf is not None
                     else verify_pdf(site / pdf_name, within_site=True))
        except UserError as error:  # a damaged PDF in a site is a changed file of it
            if not any(f.path == pdf_name for f in report.problems):
                report.problems.append(Finding(pdf_name, "changed", str(error)))
            return report
        report.problems += [Finding(f"{pdf_name}:{f.path}", f.problem, f.detail)
                            for f in inner.problems]
        report.notes += [f"{pdf_name}: {note}" for note in inner.notes]
        report.signature = inner.signature
        site_manifest = (site / MANIFEST).read_bytes()
        if inner.attachments_manifest is not None and inner.attachments_manifest != site_manifest:
            report.problems.append(Finding(f"{pdf_name}:{MANIFEST_ATTACHMENT}", "changed",
                                           "differs from the site's data/manifest.json"))
    return report


def _check_input(report: VerifyReport, label: str, path: Path, digest: str | None) -> None:
    if not digest:
        return
    if not path.exists():
        report.notes.append(f"{label} not found at {path}; not checked")
        return
    report.checked += 1
    if sha256_path(path) != digest:
        report.problems.append(Finding(str(path), "input changed",
                                       f"{label}: sha256 differs from the manifest"))


def _verify_inputs(site: Path, manifest: dict, report: VerifyReport) -> None:
    inputs = manifest.get("inputs") or {}
    spec = inputs.get("spec") or {}
    location = spec.get("location")
    if not location:
        report.notes.append("the manifest records no input locations; inputs not checked")
        return
    spec_path = site / location
    if not spec_path.is_file():
        report.notes.append(f"spec not found at {spec_path}; inputs not checked")
        return
    _check_input(report, "spec", spec_path, spec.get("sha256"))
    base = spec_path.resolve().parent
    checkpoint = inputs.get("checkpoint") or {}
    if checkpoint.get("location"):
        _check_input(report, "checkpoint", base / checkpoint["location"], checkpoint.get("sha256"))
    for image in inputs.get("images") or []:
        if image.get("location"):
            _check_input(report, f"image {image['id']}", base / image["location"],
                         image.get("sha256"))
        if image.get("mask_location"):
            _check_input(report, f"mask of {image['id']}", base / image["mask_location"],
                         image.get("mask_sha256"))


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
        if record is None or record[1] is None:
            raise UserError(f"{pdf}: not a readable PDF ({error})") from None
        # a file of its site that no longer reads: changed, as `verify SITE` says
        report.problems.append(Finding(record[0], "changed", f"not a readable PDF ({error})"))
        return report
    finally:
        pypdf_log.setLevel(level)
    if MANIFEST_ATTACHMENT not in attachments:
        raise UserError(f"{pdf}: not a reportgen report (no embedded {MANIFEST_ATTACHMENT})")
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
    report.attachments_manifest = contents[MANIFEST_ATTACHMENT]
    try:
        manifest = json.loads(contents[MANIFEST_ATTACHMENT])
    except (UnicodeDecodeError, json.JSONDecodeError):
        report.problems.append(Finding(MANIFEST_ATTACHMENT, "attachment changed",
                                       "not readable JSON"))
        return report
    spec = (manifest.get("inputs") or {}).get("spec") or {}
    expected = {spec.get("path") or "spec": spec.get("sha256"),
                METRICS_ATTACHMENT: (manifest.get("outputs") or {}).get(METRICS_OUTPUT)}
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


def _site_record(pdf: Path) -> tuple[str, str | None] | None:
    """(the PDF's path in its site, the sha256 the site's checksums record for it, None if
    they list it not), or None when the PDF lies in no site."""
    for site in pdf.resolve().parents:
        checksums = site / CHECKSUMS
        if not checksums.is_file():
            continue
        try:
            listed = parse_checksums(checksums.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        relative = pdf.resolve().relative_to(site).as_posix()
        return relative, listed.get(relative)
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
    relative, digest = record
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
    """The state of the PDF's last signature: unsigned, valid, modified or invalid."""
    data = pdf.read_bytes()
    if b"/ByteRange" not in data:
        return SignatureState("unsigned")
    try:
        from reportgen.render.pdf_sign import validate_signature
    except ImportError:
        return SignatureState("unchecked", detail="the PDF is signed; install reportgen[sign] "
                              "(pyHanko) to check the signature")
    return validate_signature(pdf)
