"""Backups in object storage, encrypted: create → list → verify → restore against an
S3-compatible server on loopback (moto's standalone server; the real boto3 client talks HTTP
to it), age encryption readable with Debian's ``age`` CLI, signed manifests, prune of
leftovers, and every bad input (wrong key, missing bucket, revoked credential, truncated or
tampered object, a manifest for other recipients) refused in one line with nothing restored."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import boto3
import pytest

from studyhub.audit import read_audit
from studyhub.connect import child_env
from studyhub.local import LocalCluster
from studyhub.local.proc import pg_program
from studyhub.ops import backup as ops
from studyhub.ops import migrate
from studyhub.ops.backup import crypto
from studyhub.profiles import BackupConfig, Profile
from tests.conftest import connect_as, make_home
from tests.s3_server import set_auth
from tests.test_backup import db_profile, drop, fill_app_data, table_rows

ACCESS_KEY = "AKIASTUDYHUBTEST0001"
SECRET_KEY = "s3cr3t/Studyhub+Backup/KeyValue0000000001"
HAS_AGE = shutil.which("age") is not None and shutil.which("zstd") is not None


@pytest.fixture(scope="module", autouse=True)
def aws_env(s3_server):
    """The tests' credentials, as an operator would export them (the environment)."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def s3_client(url: str, key: str = ACCESS_KEY, secret: str = SECRET_KEY):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path | str]:
    """The operator's identity, an offline recovery identity, a stranger's, a signing key."""
    d = tmp_path_factory.mktemp("keys")
    out: dict[str, Path | str] = {}
    for who in ("operator", "recovery", "stranger"):
        res = ops.keygen(d / f"{who}.txt")
        out[who], out[f"{who}_recipient"] = d / f"{who}.txt", res.public
    res = ops.keygen(d / "signing.pem", signing=True)
    out["signing"], out["verify_key"] = d / "signing.pem", res.public
    return out


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    name = f"studyhub-{uuid.uuid4().hex[:10]}"
    s3_client(s3_server).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def config(s3_server, bucket, keys) -> BackupConfig:
    """A profile's [local.backup] table: Spaces-style endpoint and region, two recipients,
    the operator's identity, manifests signed and checked; small parts (multipart at 5 MiB)."""
    return BackupConfig(
        profile="local", target=f"s3://{bucket}/studyhub/nightly", endpoint_url=s3_server,
        region="us-east-1", recipients=(keys["operator_recipient"], keys["recovery_recipient"]),
        identity_file=keys["operator"], signing_key_file=keys["signing"],
        verify_key=keys["verify_key"], part_size_mib=5, parts_in_flight=2)


BLOB_MIB = 12


@pytest.fixture(scope="module")
def source(cluster: LocalCluster, migrated: Profile):
    """A migrated database full of awkward data, plus 12 MiB of incompressible bytes in one
    table (its object is uploaded in three 5 MiB parts)."""
    name = f"bkr_src_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    prof = db_profile(migrated, name)
    migrate.upgrade(prof)
    with connect_as(prof, "app", name) as conn:
        fill_app_data(conn, students=10)
        conn.execute("CREATE TABLE ops.blob (id int PRIMARY KEY, b bytea)")
        conn.execute(
            "INSERT INTO ops.blob SELECT r, (SELECT decode(string_agg(md5(random()::text || g || r), ''), 'hex') "
            "FROM generate_series(1, 65536) g) FROM generate_series(1, %s) r", (BLOB_MIB,))
    yield prof
    cluster.drop_database(name)


@pytest.fixture(scope="module")
def remote_set(source, config) -> ops.BackupResult:
    return ops.create_backup(source, config=config, jobs=2)


def objects(url: str, bucket: str, prefix: str) -> dict[str, dict]:
    res = s3_client(url).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for o in res.get("Contents", [])}


def set_prefix(config: BackupConfig, name: str) -> str:
    return f"{config.target.split('/', 3)[3]}/{name}"


# ------------------------------------------------------------------------- round trip
def test_remote_set_is_encrypted_signed_and_restores_equal(cluster, source, config, bucket,
                                                           s3_server, remote_set, keys):
    assert remote_set.path == f"{config.target}/{remote_set.name}"
    assert remote_set.encrypted_for == [crypto.fingerprint(keys["operator_recipient"]),
                                        crypto.fingerprint(keys["recovery_recipient"])]
    assert remote_set.signed_by and remote_set.memory_bound_bytes == (2 + 2 + 1) * 5 * (1 << 20)
    prefix = set_prefix(config, remote_set.name)
    stored = objects(s3_server, bucket, prefix + "/")
    manifest_raw = s3_client(s3_server).get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read()
    manifest = json.loads(manifest_raw)
    # the manifest names recipients by fingerprint only, never a key
    assert b"age1" not in manifest_raw and b"AGE-SECRET" not in manifest_raw
    assert manifest["encryption"]["recipients"] == remote_set.encrypted_for
    # every object but the manifest, its signature is an age file; none holds data in clear
    for key in stored:
        rel = key[len(prefix) + 1:]
        if rel in ("manifest.json", "manifest.sig"):
            continue
        assert rel.endswith(".age"), rel
        head = s3_client(s3_server).get_object(Bucket=bucket, Key=key, Range="bytes=0-20")["Body"].read()
        assert head.startswith(b"age-encryption.org/v1"), rel
    assert {f["path"] for f in manifest["files"]} == {
        k[len(prefix) + 1:] for k in stored} - {"manifest.json", "manifest.sig"}
    # the 12 MiB table went up as a multipart upload (three parts of 5 MiB)
    blob = next(f["path"] for f in manifest["table_files"] if f["table"] == "blob")
    assert stored[f"{prefix}/{blob}"]["ETag"].strip('"').endswith("-3")
    # listed as complete from the bucket
    listed = {s.name: s for s in ops.list_target_sets(config.target, config=config)}
    assert listed[remote_set.name].status == "complete"
    assert listed[remote_set.name].encrypted_for == remote_set.encrypted_for

    target = f"bkr_rt_{uuid.uuid4().hex[:8]}"
    try:
        result = ops.restore_set(None, remote_set.name, source, target, config=config, jobs=2)
        assert table_rows(source, target) == table_rows(source, source.database)
        assert result.tables == len(manifest["tables"])
        with connect_as(source, "app", target) as conn:
            assert conn.execute("SELECT sum(length(b)) FROM ops.blob").fetchone()[0] == BLOB_MIB << 20
    finally:
        drop(cluster, target, target + "_restoring")


def count_gets(target: ops.RemoteTarget) -> dict[str, int]:
    """GET requests per object key, seen by the client's own event hook (the requests still go
    to the server)."""
    counts: dict[str, int] = {}

    def seen(params, **_):
        counts[params["Key"]] = counts.get(params["Key"], 0) + 1

    target.store.client.meta.events.register("before-parameter-build.s3.GetObject", seen)
    return counts


def test_verify_reads_each_object_once_and_restore_verify_hashes_while_restoring(
        source, config, remote_set):
    target = ops.open_target(config.target, config)
    gets = count_gets(target)
    result = ops.verify_backup(target.open_set(remote_set.name, config), config=config)
    assert result.ok, result.problems
    data = {k: n for k, n in gets.items() if not k.endswith(("manifest.json", "manifest.sig"))}
    manifest = target.open_set(remote_set.name, config).manifest
    assert len(data) == len(manifest.files) and set(data.values()) == {1}

    gets.clear()
    result = ops.verify_backup(target.open_set(remote_set.name, config), restore=True,
                               local_profile=source, config=config)
    assert result.ok and result.restored, result.problems
    data = {k: n for k, n in gets.items() if not k.endswith(("manifest.json", "manifest.sig"))}
    # every object downloaded exactly once: streamed into the scratch database (hashed on the
    # way) or, for the tables with no rows, read and hashed after
    assert len(data) == len(manifest.files) and set(data.values()) == {1}, data
    listed = {s.name: s for s in ops.list_target_sets(config.target, config=config)}
    assert listed[remote_set.name].verified["ok"] and listed[remote_set.name].verified["restored"]


@pytest.mark.needs(HAS_AGE, "Debian's age and zstd (scripts/bootstrap.sh --tests installs them)")
def test_a_table_decrypts_with_the_stock_age_cli_and_loads_with_copy(source, config, bucket,
                                                                      s3_server, remote_set,
                                                                      keys, tmp_path):
    """As docs/backup.md shows: download one table's object, `age -d -i KEY | zstd -d`, then
    `COPY … FROM STDIN (FORMAT binary)` with the manifest's column list — no StudyHub. The
    offline recovery key decrypts it as well as the operator's."""
    prefix = set_prefix(config, remote_set.name)
    client = s3_client(s3_server)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/manifest.json")["Body"].read())
    tf = next(f for f in manifest["table_files"] if f["table"] == "students")
    obj = tmp_path / "students.bin.zst.age"
    client.download_file(bucket, f"{prefix}/{tf['path']}", str(obj))
    cols = ", ".join(f'"{c}"' for c in tf["columns"])
    with connect_as(source, "app", source.database) as conn:
        for who in ("operator", "recovery"):
            conn.execute(f"CREATE TABLE ops.students_by_{who} (LIKE public.students)")
    env = child_env(source, "app")
    for who in ("operator", "recovery"):
        cmd = (f"age -d -i {keys[who]} {obj} | zstd -d | {pg_program('psql')} --no-psqlrc "
               f"-v ON_ERROR_STOP=1 -c 'COPY ops.students_by_{who} ({cols}) FROM STDIN (FORMAT binary)'")
        res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, capture_output=True,
                             text=True, cwd="/")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "COPY 10"
    with connect_as(source, "app", source.database) as conn:
        for who in ("operator", "recovery"):
            assert conn.execute(
                f"SELECT count(*) FROM (SELECT * FROM public.students EXCEPT "
                f"SELECT * FROM ops.students_by_{who}) d").fetchone()[0] == 0
            conn.execute(f"DROP TABLE ops.students_by_{who}")
    # a stranger's key does not open it
    res = subprocess.run(["age", "-d", "-i", str(keys["stranger"]), str(obj)], capture_output=True)
    assert res.returncode != 0 and b"no identity matched" in res.stderr.lower()


def use_toml(monkeypatch, path: Path, config: BackupConfig, **keys: object) -> None:
    """studyhub.toml with a [local.backup] table made of ``config`` (``keys`` override; None
    leaves a key out), for the command line. Always with the local endpoint: a test never
    reaches a real object store."""
    values = {"target": config.target, "endpoint_url": config.endpoint_url,
              "region": config.region, "recipients": list(config.recipients),
              "identity_file": str(config.identity_file) if config.identity_file else None,
              "verify_key": config.verify_key, **keys}
    lines = ["[local.backup]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()
                                  if v is not None]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("STUDYHUB_CONFIG", str(path))


def test_cli_against_the_profiles_configured_target(cli, cluster, source, config, remote_set,
                                                    monkeypatch, tmp_path):
    """[local.backup] in studyhub.toml: list, verify and restore find the bucket themselves."""
    use_toml(monkeypatch, tmp_path / "studyhub.toml", config)
    res = cli("backup", "list")
    assert res.exit_code == 0, res.stderr
    assert remote_set.name in res.stdout and config.target in res.stdout
    res = cli("backup", "list", "--json")
    assert {s["name"]: s["status"] for s in json.loads(res.stdout)}[remote_set.name] == "complete"
    res = cli("backup", "verify", remote_set.name)
    assert res.exit_code == 0 and "match the manifest" in res.stdout, res.stdout + res.stderr
    target = f"bkr_cli_{uuid.uuid4().hex[:8]}"
    prof = dataclasses.replace(source)  # the restore runs on the local profile's cluster
    try:
        res = cli("backup", "restore", f"{config.target}/{remote_set.name}", "-d", target, "--yes")
        assert res.exit_code == 0, res.stdout + res.stderr
        assert "restored" in res.stdout and "encrypted" in res.stdout
        assert table_rows(prof, target) == table_rows(source, source.database)
    finally:
        drop(cluster, target, target + "_restoring")


# ------------------------------------------------------------------------------ bad input
_copies = [0]


def copy_set(url: str, bucket: str, config: BackupConfig, name: str, to_prefix: str | None = None,
             stamp: str | None = None) -> tuple[str, str]:
    """A copy of set ``name`` under a new name (another time stamp), to damage; returns the
    copy's name and prefix."""
    _copies[0] += 1
    base, _, _ = name.rpartition("-")
    new = f"{base}-{stamp or f'2025010{_copies[0] % 10}T0000{_copies[0] % 60:02d}Z'}"
    src = set_prefix(config, name)
    dst_root = to_prefix or config.target.split("/", 3)[3]
    client = s3_client(url)
    for key in objects(url, bucket, src + "/"):
        client.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": key},
                           Key=f"{dst_root}/{new}/{key[len(src) + 1:]}")
    return new, f"{dst_root}/{new}"


def read_obj(url: str, bucket: str, key: str) -> bytes:
    return s3_client(url).get_object(Bucket=bucket, Key=key)["Body"].read()


def write_obj(url: str, bucket: str, key: str, data: bytes) -> None:
    s3_client(url).put_object(Bucket=bucket, Key=key, Body=data)


def data_object(config, url, bucket, prefix: str, table: str) -> str:
    manifest = json.loads(read_obj(url, bucket, f"{prefix}/manifest.json"))
    return next(f["path"] for f in manifest["table_files"] if f["table"] == table)


def databases_like(cluster: LocalCluster, pattern: str) -> list[str]:
    with cluster.admin_connect() as admin:
        return [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,)).fetchall()]


def test_wrong_key_is_refused_naming_the_sets_recipients(cli, cluster, source, config, keys,
                                                         remote_set, monkeypatch, tmp_path):
    stranger = dataclasses.replace(config, identity_file=keys["stranger"])
    target = f"bkr_wk_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ops.BackupError) as err:
        ops.restore_set(None, remote_set.name, source, target, config=stranger)
    text = str(err.value)
    assert text.startswith("wrong key") and "\n" not in text
    for fp in remote_set.encrypted_for:
        assert fp in text
    assert crypto.fingerprint(keys["stranger_recipient"]) in text
    assert databases_like(cluster, f"{target}%") == []  # nothing was created
    use_toml(monkeypatch, tmp_path / "studyhub.toml", config)
    res = cli("backup", "restore", f"{config.target}/{remote_set.name}", "-d", target, "--yes",
              "--identity", keys["stranger"])
    assert res.exit_code != 0 and "wrong key" in res.stderr and "Traceback" not in res.stderr
    assert databases_like(cluster, f"{target}%") == []


def test_missing_bucket_is_one_line_before_any_snapshot(cli, source, config, s3_server,
                                                        tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    gone = dataclasses.replace(config, target="s3://no-such-bucket-studyhub/x")
    with pytest.raises(ops.BackupError, match="bucket no-such-bucket-studyhub does not exist"):
        ops.create_backup(source, config=gone)
    (line,) = read_audit()
    assert line["action"] == "backup.create" and line["outcome"] == "failed"
    assert "does not exist" in line["error"] and "set" not in line  # no snapshot was taken
    with pytest.raises(ops.BackupError, match="does not exist"):
        ops.list_target_sets(gone.target, config=gone)
    use_toml(monkeypatch, tmp_path / "studyhub.toml", gone)
    res = cli("backup", "list")
    assert res.exit_code != 0
    assert res.stderr.strip() == "error: bucket no-such-bucket-studyhub does not exist at 127.0.0.1:" + \
        config.endpoint_url.rsplit(":", 1)[1]


def test_truncated_object_fails_verify_and_restore_refuses_before_anything(
        cluster, source, config, bucket, s3_server, remote_set):
    name, prefix = copy_set(s3_server, bucket, config, remote_set.name)
    rel = data_object(config, s3_server, bucket, prefix, "blob")
    whole = read_obj(s3_server, bucket, f"{prefix}/{rel}")
    write_obj(s3_server, bucket, f"{prefix}/{rel}", whole[: len(whole) // 2])
    result = ops.verify_set(config.target, name, config=config)
    assert not result.ok and any(rel in p and "truncated" in p for p in result.problems)
    target = f"bkr_tr_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ops.BackupError, match="damaged, not restoring.*truncated"):
        ops.restore_set(config.target, name, source, target, config=config)
    assert databases_like(cluster, f"{target}%") == []


def _flip_middle_byte(url: str, bucket: str, key: str) -> bytes:
    data = bytearray(read_obj(url, bucket, key))
    data[len(data) // 2] ^= 0x01
    write_obj(url, bucket, key, bytes(data))
    return bytes(data)


def test_tampered_object_fails_its_sha256_and_nothing_is_overwritten(
        cluster, source, config, bucket, s3_server, remote_set):
    name, prefix = copy_set(s3_server, bucket, config, remote_set.name)
    rel = data_object(config, s3_server, bucket, prefix, "students")
    _flip_middle_byte(s3_server, bucket, f"{prefix}/{rel}")
    result = ops.verify_set(config.target, name, config=config)
    assert not result.ok and result.problems == [f"{rel}: sha256 differs from the manifest "
                                                 "(tampered or corrupted)"]
    target = f"bkr_tp_{uuid.uuid4().hex[:8]}"
    cluster.create_database(target)
    try:
        with connect_as(source, "app", target) as conn:
            conn.execute("CREATE TABLE precious (v text)")
            conn.execute("INSERT INTO precious VALUES ('keep me')")
        with pytest.raises(ops.BackupError) as err:
            ops.restore_set(config.target, name, source, target, config=config, replace=True)
        assert rel in str(err.value) and "\n" not in str(err.value)
        assert "sha256" in str(err.value) or "AEAD" in str(err.value)
        with connect_as(source, "app", target) as conn:  # the target was not touched
            assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]
            assert conn.execute("SELECT to_regclass('public.students')").fetchone()[0] is None
    finally:
        drop(cluster, target, target + "_restoring")


def test_aead_failure_when_the_manifest_was_rewritten_to_match(cluster, source, config, bucket,
                                                               s3_server, remote_set):
    """Someone who can write the bucket changes an object and its manifest entry alike (no
    verify_key configured, so an unsigned manifest is taken): the sha256 checks pass, age's
    authentication does not — the restore stops, naming the object."""
    unsigned = dataclasses.replace(config, verify_key=None, signing_key_file=None)
    name, prefix = copy_set(s3_server, bucket, config, remote_set.name)
    rel = data_object(config, s3_server, bucket, prefix, "blob")
    data = _flip_middle_byte(s3_server, bucket, f"{prefix}/{rel}")
    manifest = json.loads(read_obj(s3_server, bucket, f"{prefix}/manifest.json"))
    import hashlib

    for f in manifest["files"]:
        if f["path"] == rel:
            f["sha256"] = hashlib.sha256(data).hexdigest()
    write_obj(s3_server, bucket, f"{prefix}/manifest.json", json.dumps(manifest).encode())
    assert ops.verify_set(unsigned.target, name, config=unsigned).ok  # hashes agree now
    target = f"bkr_ae_{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ops.BackupError) as err:
            ops.restore_set(unsigned.target, name, source, target, config=unsigned)
        assert str(err.value) == (f"{rel} failed age authentication (AEAD): the object was "
                                  "tampered with, truncated or corrupted")
        assert databases_like(cluster, target) == []
        # the same change with the profile's verify_key: the manifest itself is refused
        with pytest.raises(ops.BackupError, match="signature does not verify"):
            ops.restore_set(config.target, name, source, target, config=config)
    finally:
        drop(cluster, target, target + "_restoring")


def test_manifest_for_other_recipients(cluster, source, config, bucket, s3_server, keys,
                                       tmp_path):
    """A set made for another recipient: refused naming who it was made for; its manifest
    rewritten to claim ours: the objects still do not open, and the restore says the manifest
    does not describe them."""
    theirs = dataclasses.replace(config, target=f"s3://{bucket}/other-team",
                                 recipients=(keys["stranger_recipient"],), verify_key=None,
                                 signing_key_file=None)
    made = ops.create_backup(source, config=theirs, jobs=1)
    mine = dataclasses.replace(theirs, identity_file=keys["operator"])
    target = f"bkr_or_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ops.BackupError, match="wrong key") as err:
        ops.restore_set(None, made.name, source, target, config=mine)
    assert crypto.fingerprint(keys["stranger_recipient"]) in str(err.value)
    prefix = f"other-team/{made.name}"
    manifest = json.loads(read_obj(s3_server, bucket, f"{prefix}/manifest.json"))
    manifest["encryption"]["recipients"] = [crypto.fingerprint(keys["operator_recipient"])]
    write_obj(s3_server, bucket, f"{prefix}/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ops.BackupError, match="is not encrypted for identity .* although the "
                                              "manifest lists it"):
        ops.restore_set(None, made.name, source, target, config=mine)
    assert databases_like(cluster, f"{target}%") == []


def test_signature_is_required_where_the_profile_has_a_verify_key(source, config, bucket,
                                                                  s3_server, remote_set):
    name, prefix = copy_set(s3_server, bucket, config, remote_set.name)
    manifest = json.loads(read_obj(s3_server, bucket, f"{prefix}/manifest.json"))
    manifest["tables"][0]["rows"] += 1
    write_obj(s3_server, bucket, f"{prefix}/manifest.json", json.dumps(manifest, indent=2).encode())
    with pytest.raises(ops.BackupError, match="signature does not verify"):
        ops.verify_set(config.target, name, config=config)
    s3_client(s3_server).delete_object(Bucket=bucket, Key=f"{prefix}/manifest.sig")
    with pytest.raises(ops.BackupError, match="is not signed"):
        ops.verify_set(config.target, name, config=config)


def test_revoked_credential_one_line_and_no_secret_anywhere(cli, source, config, s3_server,
                                                            bucket, tmp_path, monkeypatch,
                                                            caplog):
    """The server checks credentials (its own IAM): a key that worked is deleted (revoked);
    list and create then fail in one line, before any snapshot — and neither the access key
    id nor the secret is in the error, the audit log or any log record, at DEBUG."""
    import botocore

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1",
                       aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)
    user = f"backup-{uuid.uuid4().hex[:6]}"
    set_auth(s3_server, 3)  # these three requests, then every request is checked
    try:
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        ops.list_target_sets(config.target, config=config)  # the key works
        boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1",
                     aws_access_key_id=key_id, aws_secret_access_key=secret,
                     config=botocore.config.Config(retries={"max_attempts": 1})
                     ).delete_access_key(UserName=user, AccessKeyId=key_id)
        with pytest.raises(ops.BackupError) as listed:
            ops.list_target_sets(config.target, config=config)
        with pytest.raises(ops.BackupError) as created:
            ops.create_backup(source, config=config)
        use_toml(monkeypatch, tmp_path / "studyhub.toml", config)
        res = cli("backup", "create")
    finally:
        set_auth(s3_server, "inf")
    assert "does not know the access key (wrong, deleted or revoked)" in str(listed.value)
    assert "checking the bucket" in str(created.value)  # before any snapshot
    for err in (listed.value, created.value):
        assert "revoked" in str(err) and "\n" not in str(err)
    assert res.exit_code != 0 and "revoked" in res.stderr and "Traceback" not in res.stderr
    audit = (tmp_path / "audit.log").read_text()
    assert '"outcome": "failed"' in audit and "revoked" in audit
    # the client side's records (the server runs in this process here; its own logs would be
    # on another machine)
    ours = [r for r in caplog.records if not r.name.startswith(("moto", "werkzeug"))]
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in ours)
    for text in (str(listed.value), str(created.value), res.stdout, res.stderr, audit, logs):
        assert key_id not in text and secret not in text
        assert ACCESS_KEY not in text and SECRET_KEY not in text


def test_no_credentials_at_all_is_one_line_and_writes_nothing(cli, source, config, s3_server,
                                                            bucket, tmp_path, monkeypatch):
    """No key in the environment, no credentials file, no ~/.aws (the tests point the AWS
    config files nowhere and turn instance metadata off): create, list and restore each stop
    in one line saying where credentials come from — before a snapshot, with no object
    written and no traceback."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    where = dataclasses.replace(config, target=f"s3://{bucket}/no-credentials")
    expected = (f"no credentials for {where.target}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a 0600 credentials_file in the profile's [backup] "
                "table, or ~/.aws/credentials")
    with pytest.raises(ops.BackupError) as err:
        ops.create_backup(source, config=where)
    assert str(err.value) == expected
    (line,) = read_audit()
    assert line["outcome"] == "failed" and "set" not in line  # no snapshot was taken
    use_toml(monkeypatch, tmp_path / "studyhub.toml", where)
    for args in (("backup", "create"), ("backup", "list"),
                 ("backup", "restore", "local-studyhub-20250101T000000Z", "-d", "bkr_nocred",
                  "--yes")):
        res = cli(*args)
        assert res.exit_code != 0, args
        assert res.stderr.strip() == f"error: {expected}", (args, res.stderr)
        assert "Traceback" not in res.stderr + res.stdout
    assert objects(s3_server, bucket, "no-credentials/") == {}
    assert s3_client(s3_server).list_multipart_uploads(
        Bucket=bucket, Prefix="no-credentials/").get("Uploads", []) == []


def test_credentials_file_must_be_private_and_is_used(source, config, tmp_path, monkeypatch,
                                                     remote_set):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "spaces.ini"
    creds.write_text(f"[spaces]\naws_access_key_id = {ACCESS_KEY}\n"
                     f"aws_secret_access_key = {SECRET_KEY}\n")
    creds.chmod(0o644)
    with_file = dataclasses.replace(config, credentials_file=creds, credentials_section="spaces")
    with pytest.raises(ops.BackupError, match="readable by others .* chmod 600") as err:
        ops.list_target_sets(config.target, config=with_file)
    assert SECRET_KEY not in str(err.value)
    creds.chmod(0o600)
    assert remote_set.name in {s.name for s in ops.list_target_sets(config.target, config=with_file)}
    creds.write_text(f"aws_secret_access_key = {SECRET_KEY}\n")  # no section: not INI
    with pytest.raises(ops.BackupError, match="not an AWS-style INI file") as err:
        ops.list_target_sets(config.target, config=with_file)
    assert SECRET_KEY not in str(err.value)


def test_secrets_in_studyhub_toml_are_refused(tmp_path, monkeypatch):
    from studyhub.errors import ConfigError
    from studyhub.profiles import backup_config

    toml = tmp_path / "studyhub.toml"
    toml.write_text('[staging.backup]\ntarget = "s3://b-k-t/p"\n'
                    f'aws_secret_access_key = "{SECRET_KEY}"\n')
    monkeypatch.setenv("STUDYHUB_CONFIG", str(toml))
    with pytest.raises(ConfigError, match="credentials never go in studyhub.toml") as err:
        backup_config("staging")
    assert SECRET_KEY not in str(err.value)


# ------------------------------------------------------------------ interrupted, leftovers
def test_interrupted_upload_is_aborted_and_leaves_nothing(source, config, bucket, s3_server,
                                                          tmp_path, monkeypatch):
    """Ctrl-C while the 12 MiB table is being uploaded in parts: its multipart upload is
    aborted, the objects already uploaded are removed, nothing lists as a set; the audit line
    says interrupted."""
    from studyhub.ops.backup import upload

    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    where = dataclasses.replace(config, target=f"s3://{bucket}/interrupted")
    client = s3_client(s3_server)
    seen_open_upload = []
    original = upload.UploadSink.write
    written: dict[str, int] = {}

    def write(self, data):
        n = original(self, data)
        written[self.rel] = written.get(self.rel, 0) + len(data)
        if written[self.rel] >= 11 << 20:  # two 5 MiB parts of the blob's object are out
            for _ in range(500):
                ups = client.list_multipart_uploads(Bucket=bucket, Prefix="interrupted/")
                if ups.get("Uploads"):
                    seen_open_upload.append(ups["Uploads"][0]["Key"])
                    raise KeyboardInterrupt
                import time

                time.sleep(0.02)
            raise AssertionError("no multipart upload was open")
        return n

    monkeypatch.setattr(upload.UploadSink, "write", write)
    with pytest.raises(KeyboardInterrupt):
        ops.create_backup(source, config=where, jobs=2)
    assert seen_open_upload and seen_open_upload[0].endswith(".age")
    assert client.list_multipart_uploads(Bucket=bucket, Prefix="interrupted/").get("Uploads", []) == []
    assert objects(s3_server, bucket, "interrupted/") == {}
    assert ops.list_target_sets(where.target, config=where) == []
    (line,) = read_audit()
    assert line["action"] == "backup.create" and line["outcome"] == "interrupted"


def test_prune_per_target_removes_abandoned_leftovers_and_old_sets(cli, source, config, bucket,
                                                                   s3_server, remote_set,
                                                                   monkeypatch, tmp_path):
    """GFS over the sets of one bucket prefix; a set prefix without a manifest and an
    unfinished multipart upload (a create killed with SIGKILL) are kept while fresh
    (in-progress) and removed/aborted once older than --abandoned-after."""
    root = "pruned"
    where = dataclasses.replace(config, target=f"s3://{bucket}/{root}")
    old = []
    for stamp, started in (("20250101T010000Z", "2025-01-01T01:00:00+00:00"),
                           ("20250102T010000Z", "2025-01-02T01:00:00+00:00")):
        name, prefix = copy_set(s3_server, bucket, config, remote_set.name, root, stamp)
        manifest = json.loads(read_obj(s3_server, bucket, f"{prefix}/manifest.json"))
        manifest["started_at"] = started
        write_obj(s3_server, bucket, f"{prefix}/manifest.json", json.dumps(manifest).encode())
        old.append(name)
    newest, _ = copy_set(s3_server, bucket, config, remote_set.name, root, "20261201T010000Z")
    client = s3_client(s3_server)
    killed = remote_set.name.rpartition("-")[0] + "-20261202T010000Z"
    client.put_object(Bucket=bucket, Key=f"{root}/{killed}/dump/toc.dat.age", Body=b"x" * 100)
    up = client.create_multipart_upload(Bucket=bucket, Key=f"{root}/{killed}/data/public.notes.bin.zst.age")
    client.upload_part(Bucket=bucket, Key=f"{root}/{killed}/data/public.notes.bin.zst.age",
                       UploadId=up["UploadId"], PartNumber=1, Body=b"y" * (5 << 20))

    sets = {s.name: s for s in ops.list_target_sets(where.target, config=where)}
    assert sets[killed].status == "in-progress"
    assert "1 unfinished multipart upload" in sets[killed].problem
    plan = ops.prune_plan(None, 1, 0, 0, target=where.target, config=where)
    decisions = {d.name: d for d in plan.decisions}
    assert decisions[killed].keep and decisions[newest].keep
    assert not decisions[old[0]].keep and not decisions[old[1]].keep

    use_toml(monkeypatch, tmp_path / "studyhub.toml", where)
    res = cli("backup", "prune", "--keep-daily", "1", "--keep-weekly", "0", "--keep-monthly",
              "0", "--abandoned-after", "0", "--yes")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "deleted 3 set(s)" in res.stdout
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=f"{root}/").get("Uploads", []) == []
    left = {k.split("/")[1] for k in objects(s3_server, bucket, f"{root}/")}
    assert left == {newest}


# ------------------------------------------------------------------- encryption choices
def test_remote_target_without_recipients_is_refused_unless_no_encrypt(cli, source, config,
                                                                       bucket, s3_server,
                                                                       monkeypatch, tmp_path):
    bare = dataclasses.replace(config, target=f"s3://{bucket}/in-clear", recipients=(),
                               signing_key_file=None, verify_key=None)
    with pytest.raises(ops.BackupError, match="refusing to upload an unencrypted backup"):
        ops.create_backup(source, config=bare)
    assert objects(s3_server, bucket, "in-clear/") == {}
    use_toml(monkeypatch, tmp_path / "studyhub.toml", bare, recipients=None, verify_key=None)
    res = cli("backup", "create", "--no-encrypt", "-j", "1")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "WARNING" in res.stderr and "in clear" in res.stderr  # loud
    assert "not encrypted" in res.stdout
    keys = list(objects(s3_server, bucket, "in-clear/"))
    assert keys and not any(k.endswith(".age") for k in keys)
    listed = ops.list_target_sets(bare.target, config=bare)
    assert listed[0].status == "complete" and listed[0].encrypted_for is None


def test_local_directory_sets_are_encrypted_when_recipients_are_configured(cluster, source,
                                                                           config, keys):
    """A directory target encrypts by default once the profile has recipients (and
    encrypt_local = false keeps it in clear); restoring it needs the identity."""
    out = make_home("studyhub-enc-")
    local = dataclasses.replace(config, target=None, signing_key_file=None, verify_key=None)
    try:
        res = ops.create_backup(source, out_dir=out, config=local, jobs=2)
        set_dir = Path(res.path)
        m = ops.read_manifest(set_dir)
        assert m.encryption and res.encrypted_for == m.recipients
        assert all(f.path.endswith(".age") for f in m.files)
        for f in m.files:
            assert (set_dir / f.path).read_bytes().startswith(b"age-encryption.org/v1")
        assert not list(set_dir.rglob("toc.dat"))  # no schema in clear either
        assert ops.verify_backup(set_dir).ok  # sizes and hashes need no key
        no_key = dataclasses.replace(local, identity_file=None)
        target = f"bkr_le_{uuid.uuid4().hex[:8]}"
        with pytest.raises(ops.BackupError, match="is encrypted .* needs an identity"):
            ops.restore_backup(set_dir, source, target, config=no_key)
        assert databases_like(cluster, f"{target}%") == []
        ops.restore_backup(set_dir, source, target, config=no_key, identity_file=keys["recovery"])
        assert table_rows(source, target) == table_rows(source, source.database)
        drop(cluster, target)
        clear = ops.create_backup(source, out_dir=out,
                                  config=dataclasses.replace(local, encrypt_local=False))
        assert clear.encrypted_for is None
        assert ops.read_manifest(Path(clear.path)).encryption is None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_keygen_writes_private_files_and_never_overwrites(cli, tmp_path, keys):
    import stat

    path = tmp_path / "id" / "backup.key"
    res = cli("backup", "keygen", "--out", path)
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    recipient = [ln for ln in path.read_text().splitlines() if ln.startswith("# public key: ")][0]
    assert f'recipients = ["{recipient.removeprefix("# public key: ")}"]' in res.stdout
    assert "AGE-SECRET-KEY" not in res.stdout
    before = path.read_bytes()
    res = cli("backup", "keygen", "--out", path)
    assert res.exit_code != 0 and "refusing to overwrite" in res.stderr
    assert path.read_bytes() == before
    res = cli("backup", "keygen", "--signing", "--out", tmp_path / "sign.pem")
    assert res.exit_code == 0 and 'verify_key = "ed25519:' in res.stdout
    path.chmod(0o644)  # an identity others can read is not used
    with pytest.raises(ops.BackupError, match="readable by others"):
        crypto.load_identity(path)


def test_erasures_recorded_in_a_newer_remote_set_are_reapplied_to_an_older_one(
        cluster, migrated, config, bucket):
    """Object storage has no ledger file beside the sets: each set carries the ledger
    (encrypted). Backup → erase a student → backup → the live database is lost → restore the
    first set: the student is erased again, from the newer set's ledger."""
    from studyhub.ops import privacy
    from studyhub.ops.privacy import PseudonymKey

    name = f"bkr_gdpr_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    prof = db_profile(migrated, name)
    where = dataclasses.replace(config, target=f"s3://{bucket}/gdpr-{name}")
    target = f"{name}_r"
    try:
        migrate.upgrade(prof)
        with connect_as(prof, "app", name) as conn:
            fill_app_data(conn, students=3)
            victim = conn.execute("SELECT id FROM students ORDER BY id LIMIT 1").fetchone()[0]
        first = ops.create_backup(prof, config=where, jobs=1)
        with connect_as(prof, "app", name, autocommit=False) as conn:
            privacy.erase_person(conn, PseudonymKey(b"k" * 64, "test"), student_id=victim)
        import time

        time.sleep(1.1)  # set names are per second
        ops.create_backup(prof, config=where, jobs=1)
        cluster.drop_database(name)  # the live database is gone
        result = ops.restore_set(None, first.name, prof, target, config=where)
        assert result.erasures.status == "reapplied" and result.erasures.entries == 1
        assert any(k.startswith("backup set ") and v == 1 for k, v in result.erasures.sources.items())
        with connect_as(prof, "app", target) as conn:
            assert conn.execute("SELECT count(*) FROM students WHERE id = %s", (victim,)).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM students").fetchone()[0] == 2
    finally:
        drop(cluster, name, target, target + "_restoring")


def test_drill_and_doctor_read_the_profiles_remote_target(cluster, source, config, bucket,
                                                          monkeypatch, tmp_path):
    """With [local.backup] pointing at the bucket, ``backup drill`` takes the newest set from
    there (streamed, decrypted with the profile's identity, signature checked), restores it on
    the local cluster, compares every table and records the drill; the doctor's backup_age
    check grades that same target. (A prefix of its own: other tests plant damaged copies.)"""
    from studyhub.ops import health

    config = dataclasses.replace(config, target=f"s3://{bucket}/drill-{uuid.uuid4().hex[:8]}")
    remote_set = ops.create_backup(source, config=config, jobs=2)
    use_toml(monkeypatch, tmp_path / "studyhub.toml", config)
    result = ops.drill_backup(source, jobs=2)
    assert result.ok, result.problems
    assert (result.target, result.set_name) == (config.target, remote_set.name)
    assert result.tables > 0 and result.rows > 0 and result.recorded
    assert not databases_like(cluster, "studyhub_drill_%")
    with connect_as(source, "app", source.database) as conn:
        [drill] = ops.recent_drills(conn, source.name, source.database, limit=1)
    assert drill.ok and drill.target == config.target and drill.set_name == remote_set.name
    check = health.backup_age_check(source, source.database, health.thresholds())
    [item] = check.items
    assert (item["target"], item["set"], item["status"]) == (config.target, remote_set.name, "ok")
