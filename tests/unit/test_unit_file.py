"""dist/musicfs.service: notify + watchdog, restart policy (3.3), hardening that keeps the mount working, and
`systemd-analyze verify` clean (3.7). Why the hardening looks the way it does: docs/systemd.md."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.shared.config import Config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "dist" / "musicfs.service"
INSTALLED_EXEC = "/usr/local/bin/musicfs"

# Options that give the service its own mount namespace: a FUSE mount made in it never reaches the host.
MOUNT_NAMESPACE_OPTIONS = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateMounts", "ReadWritePaths",
    "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths", "TemporaryFileSystem", "BindPaths",
    "BindReadOnlyPaths", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectControlGroups", "ProtectProc", "ProcSubset", "MountAPIVFS", "RootDirectory", "RootImage",
    "DynamicUser", "MountFlags", "PrivateUsers",
}
# Options that set no_new_privs for a service with User=: the setuid fusermount3 then cannot mount.
NNP_IMPLYING_OPTIONS = {
    "DynamicUser", "LockPersonality", "MemoryDenyWriteExecute", "PrivateDevices", "ProtectClock",
    "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules", "ProtectKernelTunables",
    "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID",
    "SystemCallArchitectures", "SystemCallFilter", "SystemCallLog",
}


def parse(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(text)
    return parser


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    return parse(UNIT.read_text())


def seconds(value: str) -> float:
    """systemd time spans used here: 30, 30s, 5min, 2min 30s."""
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?", value):
        total += float(number) * {"ms": 0.001, "": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}[suffix]
    return total


@pytest.mark.resilience("3.7")
def test_notify_watchdog_and_mount_cleanup(unit):
    svc = unit["Service"]
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert 10 <= seconds(svc["WatchdogSec"]) <= 120
    assert seconds(svc["TimeoutStartSec"]) >= 60  # the daemon extends it itself during a first scan
    exec_start = svc["ExecStart"].split()
    assert exec_start[:2] == [INSTALLED_EXEC, "mount"]
    assert "$MUSICFS_SOURCES" in exec_start and "${MUSICFS_MOUNTPOINT}" in exec_start
    assert svc["EnvironmentFile"] == "/etc/musicfs/musicfs.env"
    stop_post = svc["ExecStopPost"]
    assert stop_post.startswith("-/usr/bin/fusermount3 ")  # "-": nothing to unmount after a clean stop
    assert "fusermount3 -uz" in stop_post and stop_post.endswith("${MUSICFS_MOUNTPOINT}")
    assert svc["KillMode"] == "mixed"


@pytest.mark.resilience("3.7")
def test_hardening_that_keeps_the_mount_working(unit):
    svc = unit["Service"]
    assert svc["User"] == "musicfs" and svc["Group"] == "musicfs"
    assert svc["StateDirectory"] == "musicfs" and svc["CacheDirectory"] == "musicfs"
    assert svc["CapabilityBoundingSet"] == "CAP_SYS_ADMIN"  # only the setuid fusermount3 can use it
    assert svc["AmbientCapabilities"] == ""  # the daemon itself holds no capability
    assert svc["NoNewPrivileges"] == "no"  # setuid fusermount3 must work
    assert svc["DevicePolicy"] == "closed" and svc["DeviceAllow"] == "/dev/fuse rw"
    assert svc["UMask"] == "0077"
    assert svc["StateDirectoryMode"] == "0700" and svc["CacheDirectoryMode"] == "0700"
    keys = {key for section in unit.sections() for key in unit[section]}
    assert not keys & MOUNT_NAMESPACE_OPTIONS, "a private mount namespace hides the FUSE mount from the host"
    assert not keys & NNP_IMPLYING_OPTIONS, "these imply NoNewPrivileges=yes: fusermount3 could not mount"


@pytest.mark.resilience("3.3")
def test_restart_policy(unit):
    svc, head = unit["Service"], unit["Unit"]
    assert svc["Restart"] == "on-failure"
    assert 1 <= seconds(svc["RestartSec"]) <= 60
    assert set(svc["RestartPreventExitStatus"].split()) == {"2", "78"}  # bad usage / bad config: no loop
    # the start limit lives in [Unit]; in [Service] systemd ignores it with a warning
    assert "StartLimitBurst" not in svc and "StartLimitIntervalSec" not in svc
    burst, interval = int(head["StartLimitBurst"]), seconds(head["StartLimitIntervalSec"])
    assert 2 <= burst <= 10
    # the limit must be reachable: `burst` restarts fit in the interval, or crashes would loop forever
    assert burst * seconds(svc["RestartSec"]) < interval
    # a graceful stop drains reads for drain_timeout; systemd must not SIGKILL it before that
    assert seconds(svc["TimeoutStopSec"]) > Config().drain_timeout + 5


@pytest.mark.resilience("3.7")
def test_systemd_analyze_verify_is_clean(tmp_path):
    analyze = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze"
                                                  if Path("/usr/bin/systemd-analyze").exists() else None)
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    # verify checks that ExecStart's program exists and is executable: point it at the one in this venv
    musicfs = Path(sys.executable).with_name("musicfs")
    assert musicfs.exists(), f"{musicfs}: install the package into the venv (pip install -e .)"
    text = UNIT.read_text()
    assert text.count(INSTALLED_EXEC) == 1
    copy = tmp_path / "musicfs.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(musicfs)))
    # --man=no: whether man pages named in Documentation= are installed depends on the machine, not the unit
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and about_unit == [], "\n".join(about_unit)


def test_verify_would_catch_a_mistake(tmp_path):
    """The check above is not vacuous: a misspelt key is reported."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    musicfs = Path(sys.executable).with_name("musicfs")
    copy = tmp_path / "musicfs.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_EXEC, str(musicfs))
                    .replace("WatchdogSec=", "WatchdogSecs=", 1))
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'WatchdogSecs'" in result.stdout + result.stderr


# -- the user unit: one library of your own, no root ---------------------------------------------------------
USER_UNIT = ROOT / "dist" / "musicfs@.service"
USER_EXEC = "%h/.local/bin/musicfs"


@pytest.fixture(scope="module")
def user_unit() -> configparser.ConfigParser:
    return parse(USER_UNIT.read_text())


@pytest.mark.resilience("3.7")
def test_user_unit_runs_one_library_per_instance_like_the_system_unit(user_unit, unit):
    svc = user_unit["Service"]
    assert svc["EnvironmentFile"] == "%E/musicfs/%i.env"  # ~/.config/musicfs/<instance>.env
    exec_start = svc["ExecStart"].split()
    assert exec_start[:2] == [USER_EXEC, "mount"]
    assert "$MUSICFS_SOURCES" in exec_start and "${MUSICFS_MOUNTPOINT}" in exec_start
    assert "--state-dir" not in exec_start  # XDG defaults: each set of sources its own state, locked
    assert user_unit["Install"]["WantedBy"] == "default.target"
    assert "User" not in svc and "Group" not in svc  # it is your own service manager
    # what makes a good service is the same as in the system unit
    for key in ("Type", "NotifyAccess", "WatchdogSec", "TimeoutStartSec", "TimeoutStopSec", "KillMode", "Restart",
                "RestartSec", "RestartPreventExitStatus", "ExecStopPost", "ExecReload", "UMask"):
        assert svc[key] == unit["Service"][key], key
    for key in ("StartLimitIntervalSec", "StartLimitBurst"):
        assert user_unit["Unit"][key] == unit["Unit"][key], key
    keys = {key for section in user_unit.sections() for key in user_unit[section]}
    assert not keys & MOUNT_NAMESPACE_OPTIONS, "a private mount namespace hides the FUSE mount from the session"
    assert not keys & NNP_IMPLYING_OPTIONS, "these imply NoNewPrivileges=yes: fusermount3 could not mount"


def _verify_user_unit(tmp_path, text: str) -> subprocess.CompletedProcess:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    musicfs = Path(sys.executable).with_name("musicfs")
    assert musicfs.exists(), f"{musicfs}: install the package into the venv (pip install -e .)"
    assert text.count(USER_EXEC) == 1
    copy = tmp_path / "musicfs@music.service"  # an instance of the template, as `systemctl --user` loads it
    copy.write_text(text.replace(USER_EXEC, str(musicfs)))
    runtime = tmp_path / "runtime"  # a --user manager wants a runtime folder, which a test machine may lack
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run([analyze, "--user", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=env)


@pytest.mark.resilience("3.7")
def test_user_unit_systemd_analyze_verify_is_clean(tmp_path):
    result = _verify_user_unit(tmp_path, USER_UNIT.read_text())
    about_unit = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode == 0 and about_unit == [], "\n".join(about_unit)


def test_user_unit_verify_would_catch_a_mistake(tmp_path):
    result = _verify_user_unit(tmp_path, USER_UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs=", 1))
    assert "Unknown key 'WatchdogSecs'" in result.stdout + result.stderr
