"""The clinic's accounts: `python -m clinic users ...` with the password on standard input, scrypt hashes,
a database only its owner can read, and the settings' checks in pipeline/params.py."""
import os
import sqlite3
import stat
import subprocess
import sys

import pytest

from clinic import accounts
from tests.conftest import ROOT, shrink_params


def users_cli(project, *args, password=None):
    return subprocess.run([sys.executable, "-m", "clinic", "--root", str(project), "users", *args], cwd=ROOT,
                          input=password, capture_output=True, text=True, timeout=60)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    shrink_params(tmp_path)
    return tmp_path


def test_users_are_added_from_standard_input_into_a_private_database(project):
    made = users_cli(project, "add", "dr.ana", "--role", "clinician", password="a long secret phrase\n")
    assert made.returncode == 0, made.stderr
    db = project / ".clinic" / "accounts.sqlite"
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600 and stat.S_IMODE(os.stat(db.parent).st_mode) == 0o700
    stored = sqlite3.connect(db).execute("SELECT role, hash FROM users WHERE name = 'dr.ana'").fetchone()
    assert stored[0] == "clinician" and stored[1].startswith("scrypt$16384$8$1$") and "secret" not in stored[1]
    assert accounts.authenticate(db, "dr.ana", "a long secret phrase") == "clinician"
    assert accounts.authenticate(db, "dr.ana", "a long secret phrasE") is None
    assert users_cli(project, "list").stdout.strip() == "dr.ana\tclinician"
    promoted = users_cli(project, "add", "dr.ana", "--role", "admin", password="another long phrase\n")
    assert promoted.returncode == 0 and accounts.authenticate(db, "dr.ana", "another long phrase") == "admin"
    assert users_cli(project, "remove", "dr.ana").returncode == 0 and accounts.users(db) == []


@pytest.mark.parametrize("args, password, message", [
    (("add", "vic", "--role", "viewer"), "short\n", "at least 10 characters"),
    (("add", "vic", "--role", "superuser"), "long enough pass\n", "invalid choice"),
    (("remove", "nobody"), None, "no user 'nobody'"),
])
def test_bad_accounts_are_refused_in_one_line(project, args, password, message):
    done = users_cli(project, *args, password=password)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_hashes_are_salted_and_roles_ordered():
    assert accounts.hash_password("same password") != accounts.hash_password("same password")
    assert accounts.allowed("admin", "clinician") and accounts.allowed("clinician", "viewer")
    assert not accounts.allowed("viewer", "clinician") and not accounts.allowed(None, "viewer")


@pytest.mark.parametrize("change, message", [
    ({"host": "0.0.0.0"}, "clinic.host"),
    ({"port": 70000}, "clinic.port"),
    ({"max_upload_mb": 0}, "clinic.max_upload_mb"),
    ({"show_file_names": "no"}, "clinic.show_file_names: expected bool"),
    ({"colour": "blue"}, "unknown key clinic.colour"),
])
def test_clinic_settings_are_checked_by_the_one_validator(tmp_path, change, message):
    from pipeline.params import ParamsError, load_params

    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        load_params(shrink_params(tmp_path, clinic=change))
