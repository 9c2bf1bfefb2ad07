"""OpenSSH as the SFTP transport: the `ssh -s sftp` command line of an origin, and ssh's last words as one error."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

from ..shared import OriginError, OriginFatal, OriginTimeout, OriginTransient

#: The helper ssh runs (SSH_ASKPASS) to ask for a password or a key's passphrase: a console script of this package.
ASKPASS = "musicfs-askpass"
PASSWORD_ENV = "MUSICFS_SSH_PASSWORD"
PASSPHRASE_ENV = "MUSICFS_SSH_PASSPHRASE"


@dataclass(frozen=True)
class SshTarget:
    """Whom an SFTP origin's ssh connects to, and how. Without an identity file or a known_hosts file the user's
    own ssh configuration decides (~/.ssh/config, the agent, ~/.ssh/known_hosts), as it does for `ssh`."""

    host: str
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    password: str | None = None
    passphrase: str | None = None
    connect_timeout: float = 5.0
    alive_interval: float = 10.0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def argv(self) -> list[str]:
        """`ssh ... -s HOST sftp`: no tty, no forwarding; BatchMode unless a secret is configured (then ssh asks
        the askpass helper, which answers only the password and passphrase prompts). An unknown host key is
        refused either way: in BatchMode ssh never asks, and the helper says no to that question."""
        argv = [ssh_binary(), "-x", "-a", "-T", "-oClearAllForwardings=yes", "-oPermitLocalCommand=no",
                f"-oConnectTimeout={max(1, round(self.connect_timeout))}",
                f"-oServerAliveInterval={max(1, round(self.alive_interval))}", "-oServerAliveCountMax=3"]
        if self.password is None and self.passphrase is None:
            argv.append("-oBatchMode=yes")
        else:
            argv += ["-oBatchMode=no", "-oNumberOfPasswordPrompts=1"]
        if self.port:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        if self.identity_file:
            argv += ["-i", self.identity_file, "-oIdentitiesOnly=yes"]
        if self.known_hosts:
            argv.append(f'-oUserKnownHostsFile="{self.known_hosts}"')
        return argv + ["-s", "--", self.host, "sftp"]

    def env(self) -> dict[str, str]:
        """ssh's environment: ours, plus the askpass helper and the secrets it hands out, when any is set."""
        env = dict(os.environ)
        for key in (PASSWORD_ENV, PASSPHRASE_ENV):
            env.pop(key, None)
        if self.password is None and self.passphrase is None:
            return env
        env.update(SSH_ASKPASS=askpass_helper(), SSH_ASKPASS_REQUIRE="force")
        if self.password is not None:
            env[PASSWORD_ENV] = self.password
        if self.passphrase is not None:
            env[PASSPHRASE_ENV] = self.passphrase
        return env

    def failure(self, stderr: str, returncode: int | None, origin: str) -> OriginError:
        """What ssh's exit means, as one line naming the host: the class says whether retrying can help."""
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        cls, detail = self._verdict(stderr, lines)
        if detail is None:
            how = f"exited with status {returncode}" if returncode is not None else "closed the connection"
            detail = f"ssh to {self.where} {how}" + (f": {lines[-1]}" if lines else "")
        return cls(f"{origin}: {detail}", origin=origin)

    def _verdict(self, text: str, lines: list[str]) -> tuple[type[OriginError], str | None]:
        known = self.known_hosts or "~/.ssh/known_hosts"
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have requested" in text:
            return OriginFatal, (f"host key for {self.where} does not match known_hosts file {known}: refusing to "
                                 f"connect (if the key was changed on purpose, remove the old one with "
                                 f"ssh-keygen -f {known} -R '{self._keyscan_name()}')")
        if "Host key verification failed" in text:
            missing = "" if self.known_hosts is None or os.path.exists(self.known_hosts) else " (file does not exist)"
            port = f"-p {self.port} " if self.port else ""
            return OriginFatal, (f"host {self.where} is not in known_hosts file {known}{missing}; refusing its key. "
                                 f"Verify it and add it, e.g. ssh-keyscan {port}{self.host} >> {known}")
        if "Permission denied" in text or "Too many authentication failures" in text:
            keys = [line for line in lines if line.startswith(("Load key", "Warning: Identity file"))]
            why = "; ".join(keys + [lines[-1]]) if lines else "permission denied"
            return OriginFatal, f"SSH authentication failed for {self.user or 'your user'} on {self.where}: {why}"
        for line in lines:
            if "Could not resolve hostname" in line:
                return OriginTransient, f"cannot resolve host {self.host}: {line.split(': ', 2)[-1]}"
            if "timed out" in line.lower():
                return OriginTimeout, f"ssh to {self.where} timed out: {line.removeprefix('ssh: ')}"
            if "connect to host" in line or "Connection refused" in line or "No route to host" in line:
                return OriginTransient, f"cannot connect to {self.where}: {line.removeprefix('ssh: ')}"
            if "no matching" in line and "found" in line:  # no algorithm in common
                return OriginFatal, f"no SSH algorithms in common with {self.where}: {line}"
        return OriginTransient, None

    def _keyscan_name(self) -> str:
        return f"[{self.host}]:{self.port}" if self.port and self.port != 22 else self.host


def ssh_binary() -> str:
    found = shutil.which("ssh")
    if found is None:
        raise OriginFatal("sftp: the ssh command is not installed (on Debian: apt-get install openssh-client)",
                          origin="sftp")
    return found


def askpass_helper() -> str:
    """The askpass helper's path: beside this Python (a venv's bin), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), ASKPASS)
    found = beside if os.access(beside, os.X_OK) else shutil.which(ASKPASS)
    if found is None:
        raise OriginFatal(f"sftp: cannot hand the password to ssh: {ASKPASS} is not installed with musicfs",
                          origin="sftp")
    return found


def askpass_main(argv: list[str] | None = None) -> int:
    """ssh's SSH_ASKPASS: prints the configured passphrase for a key's prompt, the password for a password prompt,
    and refuses every other question (a new host key is never accepted this way)."""
    prompt = " ".join(sys.argv[1:] if argv is None else argv).lower()
    if "passphrase" in prompt:
        secret = os.environ.get(PASSPHRASE_ENV)
    elif "password" in prompt:
        secret = os.environ.get(PASSWORD_ENV)
    else:
        secret = None
    if secret is None:
        return 1
    sys.stdout.write(secret + "\n")
    return 0
