"""Issue 15 end to end, on real components: a worklist submitted over HTTP (PostgreSQL + Redis), a
real worker analyses the slide, a technologist reviews the unidentified cells in a login session,
labels a blast, acknowledges every flag with a comment and signs with the password re-entered; the
slide then awaits a pathologist and nothing reaches the LIS; a pathologist signs, and a REAL MLLP
listener receives the ORU^R01 (sent by the API's dispatcher thread from the LIS outbox), which hl7apy
validates, with the patient, the accession, LOINC codes and OBX-7/OBX-8. An amendment and a new
pair of signatures then send a corrected result (OBR-25/OBX-11 ``C``).

The shipped model (v1) has no blast class: the reviewer records one with the review vocabulary's
``blast``, which fires the blast rules and goes to the LIS under the manual-count LOINC 709-6 with an
abnormal flag in OBX-8.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import create_engine, text

from tests.mllp_listener import MllpListener

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PASSWORD = "e2e technologist pw"
PATHOLOGIST_PASSWORD = "e2e pathologist pw"


def _login(api_url: str, username: str, password: str) -> tuple[requests.Session, str]:
    s = requests.Session()
    page = s.get(f"{api_url}/ui/login", timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    r = s.post(
        f"{api_url}/ui/login",
        data={"username": username, "password": password, "csrf_token": token.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302, r.text[:300]
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)"', s.get(f"{api_url}/ui/", timeout=30).text)
    assert meta
    return s, meta.group(1)


def test_worklist_to_lis(postgres_url: str, redis_url: str, start_stack, real_cells: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hematovision.devtools.synthetic import make_slide

    eng = create_engine(postgres_url)
    with eng.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    eng.dispose()
    slide = tmp_path / "smear-1.tiff"
    make_slide(slide, real_cells, 2048, 2048, mpp=0.25, n_wbc=25, seed=3, fmt="tiff")
    worklist = (
        "file,accession,patient_id,assigning_authority,birth_date,sex,collected_at,wbc_10e9_per_l\n"
        "smear-1.tiff,ACC-E2E-1,MRN42,HOSP,1960-02-29,M,2026-12-01T07:45:00Z,7.2\n"
    )
    with (
        MllpListener() as lis,
        start_stack(
            tmp_path / "var", postgres_url, redis_url, lis_host="127.0.0.1", lis_port=str(lis.port), lis_interval_s="1"
        ) as stack,
    ):
        stack.start_worker()
        stack.add_user("tech1", "Jane Doe", "technologist", PASSWORD)
        stack.add_user("path1", "Paul Path", "pathologist", PATHOLOGIST_PASSWORD)
        client = stack.client()
        batch = client.submit([slide], worklist=worklist, name="e2e")
        final = client.wait_for_batch(batch["id"], timeout_s=900, poll_s=1.0)
        assert final["states"] == {"succeeded": 1}, (final, stack.log("worker"))
        slide_id = final["jobs"][0]["slide_id"]
        found = client._call("GET", "/api/v1/slides", params={"accession": "ACC-E2E-1"}).json()
        assert [s["id"] for s in found["slides"]] == [slide_id]
        report = client.report(slide_id)
        assert report["patient"]["wbc_10e9_per_l"] == 7.2 and report["patient"]["sex"] == "M"
        assert report["absolute_10e9_per_l"], "absolute counts need the worklist's WBC"

        api = stack.api_url
        person, csrf = _login(api, "tech1", PASSWORD)
        hdr = {"X-CSRFToken": csrf}
        cells = person.get(f"{api}/api/v1/slides/{slide_id}/cells", timeout=30).json()["cells"]
        open_cells = [c for c in cells if c["kind"] == "wbc" and c["label"] in (None, "unidentified")]
        wbc = [c for c in cells if c["kind"] == "wbc"]
        for i, c in enumerate(open_cells or wbc[:1]):
            label = "blast" if i == 0 else "lymphocyte"  # one blast recorded by the reviewer
            r = person.post(f"{api}/api/v1/cells/{c['id']}/label", json={"label": label}, headers=hdr)
            assert r.status_code == 200, r.text

        def acknowledge_all(session: requests.Session, headers: dict[str, str]) -> list[str]:
            flags = session.get(f"{api}/api/v1/slides/{slide_id}/report", timeout=30).json()["flags"]
            codes = list(dict.fromkeys(f["code"] for f in flags))
            for code in codes:
                r = session.post(
                    f"{api}/api/v1/slides/{slide_id}/flags/{code}/ack",
                    json={"comment": f"{code} reviewed on the smear"},
                    headers=headers,
                )
                assert r.status_code == 201, r.text
            return codes

        def sign(session: requests.Session, headers: dict[str, str], password: str) -> requests.Response:
            body = {"password": password}
            if not session.get(f"{api}/api/v1/slides/{slide_id}/report", timeout=30).json()["differential_sufficient"]:
                body["reason"] = "all white cells of the smear counted"
            return session.post(f"{api}/api/v1/slides/{slide_id}/signoff", json=body, headers=headers, timeout=30)

        r = sign(person, hdr, PASSWORD)
        assert r.status_code == 409 and r.json()["error"]["code"] == "unacknowledged_flags", r.text
        codes = acknowledge_all(person, hdr)
        assert any(c.startswith("BLASTS") for c in codes), codes  # the reviewer's blast fires the blast rules
        r = sign(person, hdr, PASSWORD)
        assert r.status_code == 200, r.text
        assert r.json()["result_status"] == "awaiting_pathologist" and r.json()["verified_by"] is None
        time.sleep(3)  # three dispatcher rounds: nothing may go out before the pathologist signs
        assert lis.messages == []
        assert sign(person, hdr, PASSWORD).status_code == 403  # a technologist cannot give the second signature

        pathologist, pcsrf = _login(api, "path1", PATHOLOGIST_PASSWORD)
        phdr = {"X-CSRFToken": pcsrf}
        r = sign(pathologist, phdr, PATHOLOGIST_PASSWORD)
        assert r.status_code == 200, r.text
        assert r.json()["result_status"] == "final" and r.json()["verified_by"] == "Paul Path"

        deadline = time.monotonic() + 60
        while not lis.messages and time.monotonic() < deadline:
            time.sleep(0.5)
        assert lis.messages, stack.log("api")
        er7 = lis.messages[0]

        # An amendment re-opens the slide as version 2; the same rules again; then a corrected result.
        r = person.post(f"{api}/api/v1/slides/{slide_id}/amend", json={"reason": "blast count corrected"}, headers=hdr)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        assert person.get(f"{api}/api/v1/slides/{slide_id}/report?version=1", timeout=30).json()["verified_by"] == (
            "Paul Path"
        )
        acknowledge_all(person, hdr)
        assert sign(person, hdr, PASSWORD).json()["result_status"] == "awaiting_pathologist"
        assert sign(pathologist, phdr, PATHOLOGIST_PASSWORD).json()["result_status"] == "amended"
        deadline = time.monotonic() + 60
        while len(lis.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(lis.messages) == 2, stack.log("api")
        corrected = lis.messages[1]
    msg = parse_message(er7, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert msg.validate() and msg.msh.msh_12.to_er7() == "2.5.1" and msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    pid = msg.oru_r01_patient_result.oru_r01_patient.pid
    assert pid.pid_3.to_er7() == "MRN42^^^HOSP^MR" and pid.pid_7.to_er7() == "19600229" and pid.pid_8.to_er7() == "M"
    order = msg.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_2.to_er7() == "ACC-E2E-1" and order.obr.obr_25.to_er7() == "F"
    obx = [o.obx for o in order.children.get("ORU_R01_OBSERVATION")]
    codes = {o.obx_3.to_er7().split("^")[0] for o in obx}
    assert {"770-8", "736-9", "751-8", "709-6"} <= codes  # neutrophils %, lymphocytes %, neutrophils #, blasts (manual)
    flags = {o.obx_3.to_er7().split("^")[0]: (o.obx_7.to_er7(), o.obx_8.to_er7()) for o in obx}
    assert flags["736-9"][0] == "0-50" and flags["736-9"][1] in ("N", "H")  # the adult limit, from the rules
    assert flags["709-6"][1] not in ("", "N"), flags["709-6"]  # a blast is abnormal whatever its share
    assert all(o.obx_11.to_er7() == "F" and o.obx_16.to_er7() == "path1^Path^Paul" for o in obx)
    notes = " ".join(n.nte_3.to_er7() for n in order.children.get("NTE"))
    assert "Jane Doe (technologist)" in notes and "awaiting pathologist" in notes

    fixed = parse_message(corrected, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)
    assert fixed.validate()
    order2 = fixed.oru_r01_patient_result.oru_r01_order_observation
    assert order2.obr.obr_25.to_er7() == "C"
    assert all(o.obx.obx_11.to_er7() == "C" for o in order2.children.get("ORU_R01_OBSERVATION"))
    assert "blast count corrected" in " ".join(n.nte_3.to_er7() for n in order2.children.get("NTE"))
