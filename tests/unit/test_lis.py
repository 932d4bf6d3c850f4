"""Results to the LIS over MLLP (issue 15): the outbox row written at sign-off, sending to a REAL
MLLP listener on a loopback port, nothing lost while the LIS is down (retried with backoff, then
sent when it is up), a refusing LIS (AE) retried, and ``hematovision lis send``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from hl7apy.parser import parse_message
from sqlalchemy import select

from hematovision.service.lis import queue_result, send_pending
from hematovision.store.models import LisMessage, Slide, utcnow
from tests.mllp_listener import MllpListener, free_port

REPORT = {
    "model": {"name": "m", "version": "1"},
    "counts": {"wbc": 100, "wbc_seen": 100},
    "differential": {
        "neutrophil": {"count": 60, "percent": 60.0, "ci95": [49.7, 69.7]},
        "lymphocyte": {"count": 40, "percent": 40.0, "ci95": [30.3, 50.3]},
    },
    "flags": [],
    "limits": "decision support",
    "verified_by": "Jane Doe",
    "verified_by_id": "jdoe",
    "verified_at": "2026-12-01T09:00:00Z",
}


@pytest.fixture
def signed_slide(settings, make_job):  # type: ignore[no-untyped-def]
    sessions, _, slide_id = make_job()
    with sessions() as s:
        slide = s.get(Slide, slide_id)
        slide.report = {**REPORT, "slide_id": slide_id}
        slide.accession, slide.patient_id, slide.assigning_authority = "ACC-5", "P5", "HOSP"
        slide.verified_by, slide.verified_at = "Jane Doe", utcnow()
        s.commit()
    return sessions, slide_id


def test_lis_down_then_up_nothing_lost(settings, signed_slide) -> None:  # type: ignore[no-untyped-def]
    sessions, slide_id = signed_slide
    settings.lis_host, settings.lis_port, settings.lis_timeout_s = "127.0.0.1", free_port(), 2.0
    with sessions() as s:
        queue_result(s, s.get(Slide, slide_id), settings)
        s.commit()
    down = send_pending(sessions, settings)  # nothing listens: connection refused
    assert (down.sent, down.failed) == (0, 1) and "not reachable" in (down.last_error or "")
    with sessions() as s:
        row = s.scalars(select(LisMessage)).one()
        assert row.sent_at is None and row.attempts == 1 and row.next_attempt_at is not None
    assert send_pending(sessions, settings).waiting == 1  # backoff: not yet
    with MllpListener(settings.lis_port) as lis:
        later = send_pending(sessions, settings, now=utcnow() + timedelta(seconds=5))
        assert later.sent == 1
        got = lis.wait_for(1)
    msg = parse_message(got[0], find_groups=True)
    assert msg.validate() and msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msg.oru_r01_patient_result.oru_r01_patient.pid.pid_3.to_er7() == "P5^^^HOSP^MR"
    assert "|770-8^" in got[0] and "|ACC-5|" in got[0]
    with sessions() as s:
        row = s.scalars(select(LisMessage)).one()
        assert row.sent_at is not None and row.ack == "AA" and row.attempts == 2 and row.last_error is None
    assert send_pending(sessions, settings, force=True).sent == 0  # sent once only


def test_a_refusing_lis_is_retried(settings, signed_slide) -> None:  # type: ignore[no-untyped-def]
    sessions, slide_id = signed_slide
    with MllpListener() as lis:
        settings.lis_host, settings.lis_port = "127.0.0.1", lis.port
        with sessions() as s:
            queue_result(s, s.get(Slide, slide_id), settings)
            s.commit()
        lis.refuse = True
        assert "AE" in (send_pending(sessions, settings).last_error or "")
        lis.refuse = False
        assert send_pending(sessions, settings, force=True).sent == 1
        assert len(lis.wait_for(1)) == 1


def test_cli_lis_send(settings, signed_slide, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hematovision.cli import main

    sessions, slide_id = signed_slide
    with MllpListener() as lis:
        for k, v in settings.model_dump().items():
            if v is not None and not isinstance(v, dict | list):
                monkeypatch.setenv(f"HEMATOVISION_{k.upper()}", str(v))
        monkeypatch.setenv("HEMATOVISION_LIS_HOST", "127.0.0.1")
        monkeypatch.setenv("HEMATOVISION_LIS_PORT", str(lis.port))
        res = CliRunner().invoke(main, ["lis", "send", slide_id])
        assert res.exit_code == 0, res.output
        assert "1 message(s) sent" in res.output and len(lis.wait_for(1)) == 1
        res = CliRunner().invoke(main, ["lis", "send", slide_id])
        assert res.exit_code == 0 and "already sent" in res.output
    assert CliRunner().invoke(main, ["lis", "send", "--help"]).exit_code == 0
    res = CliRunner().invoke(main, ["lis", "send", "f" * 32])
    assert res.exit_code != 0 and "no slide" in res.output


def test_signoff_queues_the_result_in_its_transaction_and_a_sender_delivers_it(app, person, make_job) -> None:  # type: ignore[no-untyped-def]
    sessions, _, slide_id = make_job()
    with sessions() as s:
        slide = s.get(Slide, slide_id)
        slide.report = {**REPORT, "slide_id": slide_id, "verified_by": None, "verified_by_id": None}
        s.commit()
    cfg = app.extensions["hv_settings"]
    with MllpListener() as lis:
        cfg.lis_host, cfg.lis_port = "127.0.0.1", lis.port
        tech = person("technologist", username="jdoe", full_name="Jane Doe")
        r = tech.post(f"/api/v1/slides/{slide_id}/signoff", json={"password": tech.password})
        assert r.status_code == 200, r.get_json()
        with sessions() as s:  # queued with the signature, not sent in the request
            row = s.scalars(select(LisMessage).where(LisMessage.slide_id == slide_id)).one()
            assert row.sent_at is None and "|F|" in row.message and "jdoe^Doe^Jane" in row.message
        assert send_pending(sessions, cfg).sent == 1  # what the dispatcher thread's chore runs
        assert "|jdoe^Doe^Jane|" in lis.wait_for(1)[0]
