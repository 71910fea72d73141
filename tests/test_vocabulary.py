"""Each protocol's declared wire vocabulary spells exactly the tags the wire has always carried."""

from __future__ import annotations

from fedcredit.protocols import horizontal, psi, vertical_jobs
from fedcredit.protocols import vertical_lr as vlr


def test_vertical_lr_tags() -> None:
    t = vlr.Tags("vlr")
    assert [t.setup, t.ctx, t.hello, t.pairseed] == ["vlr/setup", "vlr/ctx", "vlr/hello", "vlr/pairseed"]
    assert [t.z("0/1"), t.r("0/1"), t.g("0/1"), t.gs("0/1")] == ["vlr/z/0/1", "vlr/r/0/1", "vlr/g/0/1", "vlr/gs/0/1"]
    assert [t.zv(2), t.ctl(2), t.score] == ["vlr/zv/2", "vlr/ctl/2", "vlr/score"]
    s = vlr.ScoreTags(t.score)
    assert (s.req, s.resp, vlr.SCORE_TAG) == ("vlr/score/req", "vlr/score/resp", "vlr/score")


def test_psi_vertical_job_and_horizontal_vocabulary() -> None:
    t = psi.Tags("psi")
    assert [t.hello, t.single(3), t.double(3), t.final] == ["psi/hello", "psi/s/3", "psi/d/3", "psi/final"]
    assert [t.resume.held, t.resume.at, t.batch_resume.held, t.batch_resume.at] == [
        "psi/resume/held", "psi/resume/at", "psi/batch/resume/held", "psi/batch/resume/at"]
    assert vertical_jobs.Tags.SPLIT == "vjob/split"
    m = horizontal.Method
    assert [m.SETUP, m.INSTALL_KEY, m.FIT, m.FINALIZE, m.GLOBAL_METRICS, m.END] == [
        "setup", "install_key", "fit", "finalize", "global_metrics", "end"]
