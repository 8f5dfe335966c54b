"""`reportgen verify`: a fresh report passes; any changed, missing or extra file fails."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pikepdf
import pytest

from reportgen.cli import main
from reportgen.verify import verify
from tests.pdf_fixtures import build_project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    build_project(root)
    return root


@pytest.fixture
def site(project: Path, tmp_path: Path) -> Path:
    """A copy of the built project, free to damage (inputs keep their relative places)."""
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    return copy / "site"


def run_verify(path: Path, capsys) -> tuple[int, dict]:
    code = main(["verify", str(path), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_passes_on_a_fresh_build(site: Path, capsys):
    code, result = run_verify(site, capsys)
    assert code == 0 and result["ok"], result
    assert result["checked"] > 20
    assert result["signature"]["status"] == "unsigned"
    assert not [n for n in result["notes"] if "not found" in n]  # inputs were re-hashed
    checksums = (site / "data" / "checksums.sha256").read_text().splitlines()
    listed = [line.split("  ", 1)[1] for line in checksums]
    assert listed == sorted(listed) and {"report.pdf", "data/manifest.json"} <= set(listed)


@pytest.mark.parametrize("name", ["index.html", "data/metrics.csv", "report.pdf",
                                  "data/manifest.json"])
def test_verify_fails_naming_a_file_changed_by_one_byte(site: Path, capsys, name: str):
    path = site / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    code = main(["verify", str(site)])
    output = capsys.readouterr().out
    assert code == 1
    assert f"changed: {name}" in output


def test_a_manifest_changed_into_broken_json_is_a_changed_file(site: Path, capsys,
                                                               monkeypatch):
    from reportgen import verify as verify_module

    reads: list[Path] = []
    original = verify_module.verify_pdf
    monkeypatch.setattr(verify_module, "verify_pdf",
                        lambda pdf, **kw: reads.append(pdf) or original(pdf, **kw))
    path = site / "data" / "manifest.json"
    path.write_bytes(b"[" + path.read_bytes()[1:])
    code = main(["verify", str(site)])
    output = capsys.readouterr().out
    assert code == 1
    assert "changed: data/manifest.json" in output
    assert "the records are the manifest attached to report.pdf" in output
    assert len(reads) == 1  # the PDF is read once, for its manifest and its own checks


def test_a_broken_manifest_with_rewritten_checksums_still_fails(site: Path):
    """Change a result, break the manifest and rewrite the checksums to match: the
    broken manifest fails by itself, and the manifest attached to the PDF, taken as the
    record instead, catches the result."""
    from reportgen.manifest import write_checksums

    metrics = site / "data" / "metrics.csv"
    metrics.write_text(metrics.read_text().replace("attention", "attentiom", 1))
    path = site / "data" / "manifest.json"
    path.write_bytes(b"[" + path.read_bytes()[1:])
    write_checksums(site)
    report = verify(site)
    assert not report.ok
    problems = {(f.path, f.problem) for f in report.problems}
    assert ("data/manifest.json", "changed") in problems
    assert ("data/metrics.csv", "changed") in problems, problems


def test_verify_fails_on_a_deleted_and_on_an_extra_file(site: Path):
    (site / "thumbs" / "img01.jpg").unlink()
    (site / "notes.txt").write_text("added later")
    report = verify(site)
    assert not report.ok
    assert {(f.path, f.problem) for f in report.problems} == {
        ("thumbs/img01.jpg", "missing"), ("notes.txt", "extra")}


def test_verify_rehashes_the_inputs_it_can_reach(site: Path):
    image = site.parent / "images" / "img00.png"
    image.write_bytes(image.read_bytes() + b"\0")
    report = verify(site)
    assert [(Path(f.path).name, f.problem) for f in report.problems] == [
        ("img00.png", "input changed")]
    shutil.rmtree(site.parent / "images")
    report = verify(site)
    assert report.ok and any("not found" in note for note in report.notes)


def test_verify_refuses_a_folder_that_is_not_a_report(tmp_path: Path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "not a reportgen site" in capsys.readouterr().err


def test_verify_pdf_passes_fresh_and_fails_when_an_attachment_is_altered(site: Path, capsys,
                                                                        tmp_path: Path):
    code, result = run_verify(site / "report.pdf", capsys)
    assert code == 0 and result["checked"] == 4, result  # 3 attachments and the whole file
    assert "unsigned: the whole file checked against its site's" in result["notes"][0]
    altered = tmp_path / "altered.pdf"
    with pikepdf.open(site / "report.pdf") as pdf:
        stream = pdf.attachments["metrics.csv"].obj.EF.F
        stream.write(stream.read_bytes().replace(b"attention_ratio", b"attention_RATIO", 1))
        pdf.save(altered)
    code, result = run_verify(altered, capsys)
    assert code == 1
    assert {(p["path"], p["problem"]) for p in result["problems"]} == {
        ("metrics.csv", "attachment changed")}
    assert "only the attachments were checked" in result["notes"][0]  # outside its site


def test_verify_pdf_fails_when_a_page_of_an_unsigned_pdf_in_its_site_changed(site: Path,
                                                                            capsys):
    with pikepdf.open(site / "report.pdf", allow_overwriting_input=True) as pdf:
        del pdf.pages[-1]  # the sign-off page, say
        pdf.save(site / "report.pdf")
    code, result = run_verify(site / "report.pdf", capsys)
    assert code == 1
    assert [(p["path"], p["problem"]) for p in result["problems"]] == [
        ("report.pdf", "changed")]
    checksums = site / "data" / "checksums.sha256"  # its line gone: not taken for outside
    checksums.write_text("".join(line for line in checksums.read_text().splitlines(True)
                                 if not line.rstrip().endswith("report.pdf")))
    code, result = run_verify(site / "report.pdf", capsys)
    assert code == 1 and [(p["path"], p["problem"]) for p in result["problems"]] == [
        ("report.pdf", "extra")]


def _self_signed_p12(folder: Path, password: bytes) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Dr. A. Reviewer")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=30))
                   .add_extension(x509.KeyUsage(True, True, False, False, False, False, False,
                                                False, False), critical=True)
                   .sign(key, hashes.SHA256()))
    path = folder / "signer.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"signer", key, certificate, None, serialization.BestAvailableEncryption(password)))
    return path


def test_a_signed_pdf_verifies_and_any_later_change_is_detected(site: Path, tmp_path: Path,
                                                               capsys):
    from reportgen.render.pdf_sign import sign_pdf
    from tests.site_fixtures import make_context

    p12 = _self_signed_p12(tmp_path, b"secret")
    pdf = tmp_path / "signed.pdf"
    shutil.copy(site / "report.pdf", pdf)
    sign_pdf(pdf, p12, "secret", make_context())
    code, result = run_verify(pdf, capsys)
    assert code == 0, result
    assert result["signature"]["status"] == "valid"
    assert "Dr. A. Reviewer" in result["signature"]["signer"]
    with pikepdf.open(pdf) as signed:
        assert signed.open_metadata()["pdfaid:part"] == "3"  # still declared PDF/A-3
    tampered = tmp_path / "tampered.pdf"
    data = bytearray(pdf.read_bytes())
    data[data.index(b"/Title")+8] ^= 0x01  # inside the signed range
    tampered.write_bytes(bytes(data))
    code, result = run_verify(tampered, capsys)
    assert code == 1, result
    assert result["signature"]["status"] in ("modified", "invalid")
    with pikepdf.open(pdf) as signed:  # an incremental update after signing
        signed.docinfo["/Title"] = "Another title"
        signed.save(tmp_path / "updated.pdf")
    code, result = run_verify(tmp_path / "updated.pdf", capsys)
    assert code == 1 and result["signature"]["status"] in ("modified", "invalid"), result


def test_signing_with_a_wrong_password_is_a_user_error(tmp_path: Path, site: Path):
    from reportgen.errors import UserError
    from reportgen.render.pdf_sign import sign_pdf
    from tests.site_fixtures import make_context

    p12 = _self_signed_p12(tmp_path, b"secret")
    with pytest.raises(UserError, match="password"):
        sign_pdf(site / "report.pdf", p12, "wrong", make_context())


def test_an_attachment_whose_md5_pypdf_reads_as_text_still_verifies(tmp_path: Path):
    """About 1 MD5 in 200 (here one starting with a zero byte) is read back by pypdf as
    UTF-16 text; the check must compare the stored bytes, not a re-encoding of them."""
    import hashlib
    import io

    from weasyprint import HTML, Attachment

    from reportgen.verify import verify_pdf

    data = b'{"n": 13}'
    assert hashlib.md5(data, usedforsecurity=False).digest()[:1] == b"\0"
    pdf = tmp_path / "report.pdf"
    HTML(string="<p>report</p>").write_pdf(pdf, attachments=[
        Attachment(file_obj=io.BytesIO(b"{}"), name="manifest.json"),
        Attachment(file_obj=io.BytesIO(data), name="notes.json")])
    report = verify_pdf(pdf)
    assert report.checked == 2
    assert not [f for f in report.problems if f.problem == "attachment changed"]


def test_a_key_that_cannot_sign_stops_the_build_before_any_work(tmp_path: Path, monkeypatch):
    from reportgen.build import BuildOptions, build
    from reportgen.compute.pipeline import Pipeline
    from reportgen.errors import UserError
    from tests.pdf_fixtures import write_project

    spec = write_project(tmp_path)
    p12 = _self_signed_p12(tmp_path, b"secret")

    def never(*args, **kwargs):
        raise AssertionError("computed before the key was checked")

    monkeypatch.setattr(Pipeline, "process", never)
    with pytest.raises(UserError, match="password"):
        build(spec, BuildOptions(sign=p12, sign_password="wrong"))
    with pytest.raises(UserError, match="no such file"):
        build(spec, BuildOptions(sign=tmp_path / "missing.p12"))
    assert not (tmp_path / "site").exists()


def test_an_edited_checksums_line_blames_the_checksums_not_the_file(site: Path, capsys):
    path = site / "data" / "checksums.sha256"
    lines = path.read_text().splitlines()
    digest, name = lines[0].split("  ", 1)
    lines[0] = f"{'0' * 64}  {name}"
    path.write_text("\n".join(lines) + "\n")
    code, result = run_verify(site, capsys)
    assert code == 1
    assert [(p["path"], p["problem"]) for p in result["problems"]] == [
        ("data/checksums.sha256", "changed")]
    assert name in result["problems"][0]["detail"]


def test_a_pdf_damaged_inside_its_site_is_a_changed_file(site: Path, capsys):
    pdf = site / "report.pdf"
    pdf.write_bytes(pdf.read_bytes()[:-2048])  # its end (cross-reference table) is gone
    for target in (site, pdf):  # verified with its site, or alone
        code, result = run_verify(target, capsys)
        assert code == 1
        assert ("report.pdf", "changed") in {(p["path"], p["problem"])
                                             for p in result["problems"]}
