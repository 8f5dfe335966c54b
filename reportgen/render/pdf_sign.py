"""PAdES signatures of the archival PDF (pyHanko, the optional `sign` extra).

The signature is added as an incremental update after the PDF/A file is written:
the original bytes stay untouched, an invisible signature field is appended, and
PDF/A-3 allows signatures, so the file remains PDF/A as far as the appended
objects go. Any later change, to a page, to an attachment or appended after the
signature, is detected by `validate_signature`. A signature carries the signing
time, so a signed PDF is, by design, not byte-identical between builds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.errors import SignatureValidationError
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

from reportgen.errors import UserError
from reportgen.report.results import ReportContext

if TYPE_CHECKING:
    from reportgen.verify import SignatureState

log = logging.getLogger(__name__)

FIELD_NAME = "ReportgenSignature"


def check_signing_key(pkcs12: Path, password: str | None) -> None:
    """Fail now, as `sign_pdf` would after the whole build, if the key cannot be read."""
    load_signer(pkcs12, password)


def load_signer(pkcs12: Path, password: str | None) -> signers.SimpleSigner:
    """The signer of the PKCS#12 file `pkcs12`, or a UserError saying why not."""
    if not pkcs12.is_file():
        raise UserError(f"--sign {pkcs12}: no such file")
    try:
        signer = signers.SimpleSigner.load_pkcs12(
            str(pkcs12), passphrase=password.encode() if password else None)
    except (ValueError, OSError) as error:
        raise UserError(f"--sign {pkcs12}: cannot read the key and certificate "
                        f"({error}); check the password") from None
    if signer is None:
        raise UserError(f"--sign {pkcs12}: cannot read the key and certificate; "
                        "check the password")
    return signer


def sign_pdf(pdf: Path, pkcs12: Path, password: str | None, context: ReportContext) -> None:
    """Sign `pdf` in place with the key and certificate of the PKCS#12 file `pkcs12`."""
    signer = load_signer(pkcs12, password)
    metadata = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME, md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=f"Archival record of report {context.report_id}",
        name=context.author or None)
    with pdf.open("rb") as source:
        writer = IncrementalPdfFileWriter(source, strict=False)
        signed = signers.sign_pdf(writer, metadata, signer=signer)
        data = signed.getvalue()
    pdf.write_bytes(data)
    log.info("signed %s with %s", pdf.name, pkcs12.name)


def validate_signature(pdf: Path) -> SignatureState:
    """The state of the last signature of `pdf` (a `verify.SignatureState`).

    valid: the signed bytes are intact and cover the whole file; modified: bytes
    changed or were appended after signing; invalid: the signature itself does not
    check. Whether the signer is trusted is reported in the detail (a self-signed
    certificate is valid but not trusted).
    """
    from reportgen.verify import SignatureState

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
