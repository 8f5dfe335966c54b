"""PAdES signatures of the archival PDF (pyHanko, the optional `sign` extra).

The signature is added as an incremental update after the PDF/A file is written:
the original bytes stay untouched, an invisible signature field is appended, and
PDF/A-3 allows signatures, so the file remains PDF/A as far as the appended
objects go. Any later change, to a page, to an attachment or appended after the
signature, is detected by `reportgen verify` (`reportgen.verify.signature_state`). A
signature carries the signing time, so a signed PDF is, by design, not byte-identical
between builds. This module only signs; checking a signature belongs to verify.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign import fields, signers

from reportgen.errors import UserError
from reportgen.report.results import ReportContext

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
