"""Registry credentials for `nydusd --image`: the Docker config's entry for the registry's
host (`DOCKER_CONFIG`), `--creds` over it; and the lookup rules themselves, as tables."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rafs._regaccess import (
    RegistryCredentials,
    docker_credentials,
    parse_host_credentials,
    registry_host,
)
from rafs._registry import RegistryError
from tests.fixtures.registry import RegistryServer, registry_basic  # noqa: F401
from tests.peer.cluster import Image, build_and_push

from .conftest import NYDUSD, Mounter


def docker_config(directory: Path, auths: dict[str, tuple[str, str]]) -> Path:
    """A Docker config dir as `docker login` leaves it: `auths` with base64 `auth` entries."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = {key: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
               for key, (u, p) in auths.items()}  # fmt: skip
    (directory / "config.json").write_text(json.dumps({"auths": entries}))
    return directory


def small_files() -> dict[str, bytes]:
    return {"hello.txt": b"hello from a private registry\n", "big.bin": bytes(range(256)) * 3000}


# --- the lookup rules, no I/O beyond a temp file ----------------------------------------


@pytest.mark.parametrize(
    ("given", "host"),
    [
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://Reg.Example:5000/v1/", "reg.example:5000"),
        ("reg.example", "reg.example"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("[::1]:5000", "[::1]:5000"),
    ],
)
def test_registry_host(given: str, host: str) -> None:
    assert registry_host(given) == host


def test_lookup_prefers_the_host_option_then_the_every_host_option_then_docker(
    tmp_path: Path,
) -> None:
    auths = {"https://a.example/v1/": ("docker-a", "pa"), "b.example:5000": ("docker-b", "pb")}
    config = docker_config(tmp_path, auths) / "config.json"
    by_host = {"a.example": ("flag-a", "x")}
    only_docker = RegistryCredentials(docker_config=config)
    assert only_docker.lookup("http://a.example") == ("docker-a", "pa")
    assert only_docker.lookup("b.example:5000") == ("docker-b", "pb")
    assert only_docker.lookup("b.example") is None  # another port is another registry
    both = RegistryCredentials(by_host, docker_config=config)
    assert both.lookup("https://a.example") == ("flag-a", "x")
    assert both.lookup("b.example:5000") == ("docker-b", "pb")
    every = RegistryCredentials(by_host, every_host=("any", "y"), docker_config=config)
    assert every.lookup("b.example:5000") == ("any", "y")
    assert every.lookup("A.example") == ("flag-a", "x")


def credential_helper(bin_dir: Path, name: str, known: dict[str, tuple[str, str]]) -> Path:
    """A `docker-credential-NAME` that answers `get` as the Docker helpers do: JSON for a
    server it knows, else exit 1 with their "not found" text; it logs what it was asked."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    answers = {server: {"ServerURL": server, "Username": u, "Secret": p}
               for server, (u, p) in known.items()}  # fmt: skip
    program = bin_dir / f"docker-credential-{name}"
    program.write_text(
        f"""#!{sys.executable}
import json, sys
answers = {answers!r}
server = sys.stdin.read().strip()
with open({str(bin_dir / (name + ".log"))!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + " " + server + "\\n")
if sys.argv[1:] != ["get"] or server not in answers:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps(answers[server]))
"""
    )
    program.chmod(0o755)
    return program


def asked(bin_dir: Path, name: str) -> list[str]:
    log = bin_dir / f"{name}.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_credential_helper_placeholder_is_no_credentials(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {"reg.example": {}}}))
    assert docker_credentials("reg.example", config) is None


def test_credential_helpers_are_asked_before_auths_as_docker_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    hub = "https://index.docker.io/v1/"
    credential_helper(bin_dir, "store", {"reg.example": ("from-store", "s1"), hub: ("hub", "s2")})
    credential_helper(bin_dir, "ecr", {"https://ecr.example:5000": ("AWS", "token")})
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = tmp_path / "config.json"
    inline = base64.b64encode(b"inline:pw").decode()
    config.write_text(json.dumps({
        "auths": {"reg.example": {}, "other.example": {"auth": inline},
                  "https://index.docker.io/v1/": {}},
        "credsStore": "store",
        "credHelpers": {"https://ecr.example:5000": "ecr"},
    }))  # fmt: skip
    assert docker_credentials("reg.example", config) == ("from-store", "s1")
    assert docker_credentials("registry-1.docker.io", config) == ("hub", "s2")
    assert docker_credentials("ECR.example:5000", config) == ("AWS", "token")
    assert docker_credentials("other.example", config) == ("inline", "pw")  # store: not found
    assert docker_credentials("nowhere.example", config) is None
    # The helper is asked under the key `docker login` used, as Docker asks it.
    assert asked(bin_dir, "ecr") == ["get https://ecr.example:5000"]
    assert "get https://index.docker.io/v1/" in asked(bin_dir, "store")
    assert "get nowhere.example" in asked(bin_dir, "store")
    lookup = RegistryCredentials(docker_config=config)
    assert lookup.lookup("http://reg.example") == ("from-store", "s1")


@pytest.mark.parametrize(
    ("script", "error"),
    [
        (None, "docker-credential-gone (set in the Docker config) is not on PATH"),
        ("print('keychain locked'); sys.exit(3)", "failed for reg.example: keychain locked"),
        ("print('not json')", "gave no Username and Secret for reg.example"),
        ('print(\'{"Username": "<token>", "Secret": "s3cr3t-tok"}\')', "identity token"),
    ],
)
def test_a_credential_helper_that_fails_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str | None, error: str
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script is not None:
        program = bin_dir / "docker-credential-gone"
        program.write_text(f"#!{sys.executable}\nimport sys\nsys.stdin.read()\n{script}\n")
        program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credsStore": "gone"}))
    with pytest.raises(RegistryError, match=re.escape(error)) as info:
        docker_credentials("reg.example", config)
    assert "s3cr3t-tok" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{not json", "cannot read Docker config"),
        ("[1, 2]", "not a JSON object"),
        ('{"auths": []}', "`auths` is not an object"),
        ('{"credsStore": "../../bin/sh"}', "`credsStore` is not a name"),
        ('{"credHelpers": {"reg": 5}}', "`credHelpers` is not an object of names"),
    ],
)
def test_an_unreadable_docker_config_is_refused_at_check(
    tmp_path: Path, text: str, error: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(text)
    with pytest.raises(RegistryError, match=error) as info:
        RegistryCredentials(docker_config=config).check()
    assert str(config) in str(info.value)
    RegistryCredentials(docker_config=tmp_path / "missing.json").check()  # none is fine


def test_host_credentials_option() -> None:
    assert parse_host_credentials("HTTPS://Reg:5000=u:p:w", "--r") == ("reg:5000", ("u", "p:w"))
    for bad in ("reg:5000", "=u:p", "reg=nocolon", "reg=:p"):
        with pytest.raises(RegistryError, match="--r"):
            parse_host_credentials(bad, "--r")


def test_passwords_are_not_in_the_repr() -> None:
    creds = RegistryCredentials({"reg": ("u", "hunter2")}, every_host=("v", "hunter3"))
    assert "hunter" not in repr(creds)


# --- nydusd --image against an htpasswd registry -----------------------------------------


@pytest.fixture
def private_image(registry_basic: RegistryServer, tmp_path: Path) -> Image:  # noqa: F811
    return build_and_push(registry_basic, tmp_path / "image", small_files(), "private/app")


def run_nydusd(*args: str) -> subprocess.CompletedProcess[str]:
    """A nydusd that is expected to fail before it mounts."""
    argv = [NYDUSD, "--mountpoint", "/nonexistent-mnt", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("nydusd: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.mark.parametrize("kept_in", ["auths", "credential helper"])
def test_image_in_a_private_registry_mounts_with_the_docker_config(
    tmp_path: Path,
    mounter: Mounter,
    registry_basic: RegistryServer,  # noqa: F811
    private_image: Image,
    monkeypatch: pytest.MonkeyPatch,
    kept_in: str,
) -> None:
    assert registry_basic.username is not None and registry_basic.password is not None
    creds = (registry_basic.username, registry_basic.password)
    bin_dir = tmp_path / "bin"
    if kept_in == "auths":
        config_dir = docker_config(tmp_path / "docker", {f"http://{registry_basic.host}": creds})
    else:
        credential_helper(bin_dir, "vault", {registry_basic.host: creds})
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        config_dir = tmp_path / "docker"
        config_dir.mkdir()
        (config_dir / "config.json").write_text(json.dumps({"credsStore": "vault"}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    m = mounter.mount("--image", private_image.reference, "--cache-dir", str(tmp_path / "cache"))
    for name, data in private_image.files.items():
        assert (m.mountpoint / name).read_bytes() == data
    assert registry_basic.password not in m.log_text()
    if kept_in == "credential helper":
        assert f"get {registry_basic.host}" in asked(bin_dir, "vault")


def test_image_in_a_private_registry_without_credentials_is_one_clear_error(
    tmp_path: Path,
    private_image: Image,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker"))
    error = one_error_line(run_nydusd("--image", private_image.reference))
    assert "requires credentials and none were given" in error
    assert "private/app" in error


def test_creds_option_overrides_a_wrong_docker_config_entry(
    tmp_path: Path,
    mounter: Mounter,
    registry_basic: RegistryServer,  # noqa: F811
    private_image: Image,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user, password = registry_basic.username, registry_basic.password
    assert user is not None and password is not None
    config_dir = docker_config(tmp_path / "docker", {registry_basic.host: (user, "wrong-password")})
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    error = one_error_line(run_nydusd("--image", private_image.reference))
    assert f"refused the credentials of user {user!r}" in error
    assert "wrong-password" not in error
    m = mounter.mount("--image", private_image.reference, "--creds", f"{user}:{password}")
    assert (m.mountpoint / "hello.txt").read_bytes() == private_image.files["hello.txt"]


def test_an_unreadable_docker_config_is_one_error_line(
    tmp_path: Path, private_image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text('{"auths": {"x": ')
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    error = one_error_line(run_nydusd("--image", private_image.reference))
    assert f"cannot read Docker config {tmp_path / 'docker' / 'config.json'}" in error
