"""The party daemon's start-up check and a job's tables are the same load: same tables, same errors.

Why: a start-up check that validates with other code or other options than the job
gives a false assurance.  The job side here is the deployed one: ``PartyRuntime``
(what a ClientApp builds for each coordinator call, admitted by the party's policy)
and the view it hands the vertical job core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crypto.certs import init_ca, issue
from fedcredit.config import load_party_config
from fedcredit.errors import DataError, PolicyRefused
from party.clientapp import PartyRuntime
from party.daemon import check_datasets

JOB = '[job]\ntype = "vertical-lr"\nparties = ["bank", "fintech"]\nlabel_party = "bank"\ntest_dataset = "test_ids"\n'


POLICY = ('[policy]\napproval = "auto"\npartners = ["fintech"]\njob_types = ["vertical-lr"]\n'
          '[policy.datasets.train]\ncolumns = ["id", "y", "a", "b"]\n'
          '[policy.datasets.test_ids]\ncolumns = ["id"]\n')


def _party(tmp_path: Path, datasets: str) -> tuple[Path, PartyRuntime]:
    ca = init_ca(tmp_path / "ca", "data-test")
    issue(ca, tmp_path / "certs", "bank")
    fintech = issue(ca, tmp_path / "fintech", "fintech")
    cfg = tmp_path / "bank.toml"
    policy = POLICY if "[datasets.test_ids]" in datasets else POLICY.split("[policy.datasets.test_ids]")[0]
    cfg.write_text(
        f'[party]\nname = "bank"\nidentity_dir = "certs"\nstate_dir = "state"\n'
        f'[coordinator]\nflower_address = "127.0.0.1:1"\nrelay_address = "127.0.0.1:2"\n{datasets}{policy}'
    )
    rt = PartyRuntime(cfg, {"run_id": "r1", "job_toml": JOB, "peer_certs": {"fintech": fintech.cert_pem.decode()}})
    rt.ledger.admit(rt.review, JOB)  # approval = "auto": the job is accepted at once
    rt.authorize("vertical.run")
    return cfg, rt


def test_what_the_startup_check_accepts_the_job_loads_identically(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": ["007", " 8", "9 "], "y": [0, 1, 0], "a": [1.5, 2.0, -3.0], "b": [1, 2, 3]})
    df.to_csv(tmp_path / "bank.csv", index=False)
    df.to_parquet(tmp_path / "bank.parquet", index=False)
    pd.DataFrame({"id": ["007", "9"]}).to_csv(tmp_path / "test_ids.csv", index=False)  # an id list, nothing else
    cfg, rt = _party(tmp_path, '[datasets.train]\npath = "bank.csv"\nlabel_column = "y"\n'
                               '[datasets.pq]\npath = "bank.parquet"\nlabel_column = "y"\nfeature_columns = ["b"]\n'
                               '[datasets.test_ids]\npath = "test_ids.csv"\nfeature_columns = []\n')
    checked = check_datasets(load_party_config(cfg))
    assert set(checked) == {"train", "pq", "test_ids"}
    job = rt.vertical_party()
    assert job.datasets == {"train", "pq", "test_ids"}
    with pytest.raises(PolicyRefused, match=r"party 'bank'.*rule datasets.*'pq'"):
        job.load("pq")  # configured, but not what this job was approved to use
    for key, t in checked.items():
        if key == "pq":
            continue
        got = job.load(key)
        assert got.ids == t.ids and got.feature_names == t.feature_names and got.source == t.source
        np.testing.assert_array_equal(got.X, t.X)
        assert (got.y is None) == (t.y is None) and (t.y is None or np.array_equal(got.y, t.y))
    assert checked["train"].ids == ["007", "8", "9"]  # normalised once, at load
    assert checked["test_ids"].n_features == 0 and checked["test_ids"].ids == ["007", "9"]


@pytest.mark.parametrize(
    "text, part",
    [("id,y,a\n1,0,1\n2,1,abc\n", "column 'a' has non-numeric value 'abc'"),
     ("id,y,a\n1,0,1\n1,1,2\n", "duplicate id '1'"),
     ("id,a\n1,0\n", "missing column(s) ['y']")],
)
def test_a_fault_gets_the_same_message_from_the_check_and_the_job(tmp_path: Path, text: str, part: str) -> None:
    (tmp_path / "bank.csv").write_text(text)
    cfg, rt = _party(tmp_path, '[datasets.train]\npath = "bank.csv"\nlabel_column = "y"\n')
    with pytest.raises(DataError) as at_start:
        check_datasets(load_party_config(cfg))
    with pytest.raises(DataError) as in_job:
        rt.vertical_party().load("train")
    assert str(at_start.value) == str(in_job.value)
    assert part in str(at_start.value) and "party 'bank'" in str(at_start.value)


def test_an_id_only_file_is_an_id_list(tmp_path: Path) -> None:
    """A file of only ids (no label declared) is accepted as an id list, as the docs say for test ids;
    with a label column declared but no feature, it is refused at start-up naming the file."""
    pd.DataFrame({"id": ["1", "2"], "y": [0, 1], "a": [1.0, 2.0]}).to_csv(tmp_path / "bank.csv", index=False)
    pd.DataFrame({"id": ["1", "2"]}).to_csv(tmp_path / "ids.csv", index=False)
    cfg, rt = _party(tmp_path, '[datasets.train]\npath = "bank.csv"\nlabel_column = "y"\n'
                               '[datasets.test_ids]\npath = "ids.csv"\n')
    check_datasets(load_party_config(cfg))
    table = rt.vertical_party().load("test_ids")
    assert table.ids == ["1", "2"] and table.feature_names == [] and table.y is None
    other = tmp_path / "other"
    other.mkdir()
    pd.DataFrame({"id": ["1", "2"], "y": [0, 1]}).to_csv(other / "bank.csv", index=False)
    cfg, _ = _party(other, '[datasets.train]\npath = "bank.csv"\nlabel_column = "y"\n')
    with pytest.raises(DataError, match=r"bank\.csv: no feature columns"):
        check_datasets(load_party_config(cfg))
