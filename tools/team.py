"""A team's MLflow: PostgreSQL + an MLflow tracking server behind MLflow's basic login.

``make team-up`` / ``make team-down`` (``python tools/team.py up|down|status``). Everything lives
in one git-ignored folder (``.team/`` at the repo root, or ``$SER_TEAM_DIR``): the database
cluster (``pg/``), the proxied artifacts (``artifacts/``), the login's config and the logs. Both
servers listen on 127.0.0.1 only, each on its own port; reach them from another machine through
an SSH tunnel (or a TLS reverse proxy you run).

Settings (environment; none is needed but the password):

- ``SER_TEAM_ADMIN_PASSWORD``, or a file named by ``SER_TEAM_ADMIN_PASSWORD_FILE`` (default
  ``~/.config/ser/team-admin-password``): the MLflow ``admin`` password, at least 12
  characters. Nothing in git holds one; without it ``up`` refuses to start. It creates the admin
  on the first start only (rotate it later with MLflow's update-password API).
- ``SER_TEAM_PORT`` (5055): the tracking server; ``SER_TEAM_DB_PORT`` (5433): PostgreSQL.
- ``SER_TEAM_ARTIFACTS``: where the server stores artifacts (``.team/artifacts`` by default;
  any URI MLflow supports, e.g. ``s3://bucket/ser``).
- ``SER_TEAM_WORKERS`` (2): the tracking server's worker processes.
- ``SER_TEAM_DB_USER``: the system user that runs PostgreSQL when ``up`` runs as root (initdb
  refuses root): ``postgres`` if it exists, else ``nobody``.

The database password is generated at the first ``up`` and kept in ``.team/`` (mode 600).
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ADMIN = "admin"
MIN_PASSWORD = 12  # MLflow's own minimum for basic-auth passwords
DB_ROLE = "ser"
DATABASES = ("mlflow", "mlflow_auth")
DEFAULT_PASSWORD_FILE = Path("~/.config/ser/team-admin-password")


class TeamError(RuntimeError):
    """A setting or a step of bringing the team's servers up or down failed; the message says which."""


def write_private(file: Path, text: str) -> None:
    """Write ``file`` readable by its owner only from the start (never briefly open to others)."""
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        os.fchmod(descriptor, 0o600)  # a file that was already there keeps no wider mode
        out.write(text)


class Team:
    def __init__(self, folder: str | os.PathLike | None = None, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        self.env = env
        self.folder = Path(folder or env.get("SER_TEAM_DIR") or REPO / ".team").resolve()
        self.port = self.number("SER_TEAM_PORT", 5055)
        self.db_port = self.number("SER_TEAM_DB_PORT", 5433)
        self.workers = self.number("SER_TEAM_WORKERS", 2)
        self.artifacts = env.get("SER_TEAM_ARTIFACTS") or str(self.folder / "artifacts")
        self.pg = self.folder / "pg"
        self.url = f"http://{HOST}:{self.port}"

    # ---- settings and secrets -----------------------------------------------------------------
    def number(self, name: str, default: int) -> int:
        value = self.env.get(name) or str(default)
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise TeamError(f"{name}={value!r}: expected a whole number from 1 to 65535")
        return int(value)

    def admin_password(self) -> str:
        if self.env.get("SER_TEAM_ADMIN_PASSWORD"):
            password, source = self.env["SER_TEAM_ADMIN_PASSWORD"], "SER_TEAM_ADMIN_PASSWORD"
        else:
            file = Path(self.env.get("SER_TEAM_ADMIN_PASSWORD_FILE") or DEFAULT_PASSWORD_FILE).expanduser()
            if not file.is_file():
                raise TeamError(f"no admin password: set SER_TEAM_ADMIN_PASSWORD or write one (>= {MIN_PASSWORD} "
                                f"characters) to {file} (or the file named by SER_TEAM_ADMIN_PASSWORD_FILE); "
                                "nothing in git holds one")
            password, source = file.read_text().strip(), str(file)
        if len(password) < MIN_PASSWORD:
            raise TeamError(f"the admin password from {source} is {len(password)} characters; "
                            f"at least {MIN_PASSWORD} are needed")
        return password

    def password_hint(self) -> str:
        """How to fill MLFLOW_TRACKING_PASSWORD for the admin, without printing the password."""
        if self.env.get("SER_TEAM_ADMIN_PASSWORD"):
            return '"$SER_TEAM_ADMIN_PASSWORD"'
        file = Path(self.env.get("SER_TEAM_ADMIN_PASSWORD_FILE") or DEFAULT_PASSWORD_FILE).expanduser()
        return f'"$(cat {file})"'

    def secret(self, name: str) -> str:
        """A random value generated once and kept in the team folder (mode 600)."""
        file = self.folder / name
        if not file.is_file():
            write_private(file, secrets.token_urlsafe(32))
        return file.read_text().strip()

    def db_uri(self, database: str, driver: str = "") -> str:
        """SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3: MLflow's URIs name psycopg2."""
        return f"postgresql{driver}://{DB_ROLE}:{self.secret('db_password')}@{HOST}:{self.db_port}/{database}"

    # ---- PostgreSQL ---------------------------------------------------------------------------
    def db_user(self) -> str | None:
        """Who runs PostgreSQL: the caller, unless root (initdb and postgres refuse root)."""
        if os.geteuid() != 0:
            return None
        for name in (self.env.get("SER_TEAM_DB_USER"), "postgres", "nobody"):
            if name:
                try:
                    pwd.getpwnam(name)
                    return name
                except KeyError:
                    continue
        raise TeamError("running as root and no unprivileged user to run PostgreSQL: set SER_TEAM_DB_USER")

    def as_db_user(self, command: list[str]) -> list[str]:
        user = self.db_user()
        return ["runuser", "-u", user, "--", *command] if user else command

    @staticmethod
    def pg_bin(tool: str) -> str:
        found = shutil.which(tool)
        if found:
            return found
        candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"), key=lambda p: int(Path(p).parts[4]))
        if candidates:
            return candidates[-1]
        raise TeamError(f"PostgreSQL's {tool} not found: install Debian's postgresql package "
                        "(make team-up does it when run as root)")

    def pg_ctl(self, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess:
        result = subprocess.run(self.as_db_user([self.pg_bin("pg_ctl"), "-D", str(self.pg), *args]),
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise TeamError(f"pg_ctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}"
                            f" (log: {self.pg / 'server.log'})")
        return result

    def db_running(self) -> bool:
        return (self.pg / "PG_VERSION").is_file() and self.pg_ctl("status", check=False).returncode == 0

    def init_db(self) -> None:
        if (self.pg / "PG_VERSION").is_file():
            return
        self.pg.mkdir(parents=True, exist_ok=True)
        user = self.db_user()
        if user:
            # the database user must reach its folder: the team folder is traversable, not listable
            self.folder.chmod(0o711)
            shutil.chown(self.pg, user)
            reach = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(self.pg)], capture_output=True)
            if reach.returncode != 0:
                raise TeamError(f"the database user {user} cannot write {self.pg} (a parent folder is closed to "
                                "it): set SER_TEAM_DIR to a folder under one it can traverse")
        self.pg.chmod(0o700)
        # the superuser's password reaches initdb in a file only it reads, never on a command line
        pwfile = self.folder / "initdb.pw"
        write_private(pwfile, self.secret("db_password") + "\n")
        if user:
            shutil.chown(pwfile, user)
        try:
            result = subprocess.run(self.as_db_user([self.pg_bin("initdb"), "-D", str(self.pg), "-U", DB_ROLE,
                                                     f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                                                     "--auth-local=peer", "-E", "UTF8", "--locale=C.UTF-8"]),
                                    capture_output=True, text=True, timeout=180)
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise TeamError(f"initdb failed: {result.stderr.strip()[-2000:]}")
        with (self.pg / "postgresql.conf").open("a") as conf:
            # TCP on loopback only, no Unix socket (its default folder may not exist or be shared)
            conf.write("\n# ser team\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")

    def start_db(self) -> None:
        self.init_db()
        if not self.db_running():
            self.pg_ctl("start", "-w", "-t", "60", "-l", str(self.pg / "server.log"), "-o", f"-p {self.db_port}")
        import psycopg2

        connection = psycopg2.connect(self.db_uri("postgres"), connect_timeout=10)
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in DATABASES:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()

    def stop_db(self) -> None:
        if self.db_running():
            self.pg_ctl("stop", "-m", "fast", "-w", "-t", "60")

    # ---- MLflow -------------------------------------------------------------------------------
    def server_pid(self) -> int | None:
        file = self.folder / "mlflow.pid"
        if not file.is_file():
            return None
        try:
            pid = int(file.read_text())
        except (OSError, ValueError):  # empty or garbled (a start cut short): no server of ours
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return None
        return pid if "mlflow" in cmdline else None  # a reused pid is someone else's process

    def start_server(self, password: str) -> None:
        if self.server_pid():
            return
        config = self.folder / "basic_auth.ini"
        write_private(config, "[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = {self.db_uri('mlflow_auth', '+psycopg2')}\nadmin_username = {ADMIN}\n"
                      # a password check costs ~0.2 s of PBKDF2 per request without the cache; a
                      # changed password reaches every worker within this many seconds
                      "auth_cache_ttl_seconds = 60\n")
        if "://" not in self.artifacts:
            Path(self.artifacts).mkdir(parents=True, exist_ok=True)
        env = {**os.environ,
               # the database URI carries its password: environment, not the command line (ps shows that)
               "MLFLOW_BACKEND_STORE_URI": self.db_uri("mlflow", "+psycopg2"),
               "MLFLOW_AUTH_CONFIG_PATH": str(config),
               "MLFLOW_AUTH_ADMIN_PASSWORD": password,
               "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("flask_secret")}
        command = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(self.port),
                   "--app-name", "basic-auth", "--workers", str(self.workers),
                   "--serve-artifacts", "--artifacts-destination", self.artifacts]
        log = self.folder / "mlflow.log"
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, cwd=self.folder)
        (self.folder / "mlflow.pid").write_text(str(process.pid))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise TeamError(f"the MLflow server exited with {process.returncode}; {log} ends with:\n{tail}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop_server()
        raise TeamError(f"the MLflow server did not answer {self.url}/health within 180 s (log: {log})")

    def stop_server(self) -> None:
        pid = self.server_pid()
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)  # the server and its workers
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    try:  # reap it when it is our child (tests start and stop in one process)
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                    time.sleep(0.2)
                if Path(f"/proc/{pid}").exists():
                    os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (self.folder / "mlflow.pid").unlink(missing_ok=True)

    # ---- the commands -------------------------------------------------------------------------
    def up(self) -> None:
        password = self.admin_password()  # before anything starts: no password, nothing runs
        # closed to others; init_db opens it to traversal (0711) when PostgreSQL runs as another user
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.start_db()
            self.start_server(password)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        self.stop_server()
        self.stop_db()

    def describe(self) -> str:
        return (f"MLflow tracking server {self.url} (login required; PostgreSQL on {HOST}:{self.db_port}, "
                f"artifacts in {self.artifacts})\n"
                "Point the pipeline at it (dvc repro, dvc exp run, ser ...):\n"
                f"  export MLFLOW_TRACKING_URI={self.url}\n"
                f"  export MLFLOW_TRACKING_USERNAME={ADMIN}   # or a user the admin created\n"
                f"  export MLFLOW_TRACKING_PASSWORD={self.password_hint()}   # that user's password\n"
                f"Stop it with: make team-down")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    try:
        team = Team()
        if args.command == "up":
            team.up()
            print(team.describe())
        elif args.command == "down":
            team.down()
            print(f"team servers in {team.folder} stopped")
        else:
            server, db = team.server_pid(), team.db_running()
            print(f"MLflow server: {'running (pid %d)' % server if server else 'stopped'}; "
                  f"PostgreSQL: {'running' if db else 'stopped'}")
            return 0 if server and db else 3
    except TeamError as exc:
        print(f"team {args.command}: {exc}", file=sys.stderr)
        return 2
    except (subprocess.TimeoutExpired, ValueError, OSError, *database_errors()) as exc:
        # up() has already stopped what it started; one line, not a traceback
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"team {args.command}: {type(exc).__name__}: {detail}", file=sys.stderr)
        return 2
    return 0


def database_errors() -> tuple[type[BaseException], ...]:
    try:
        import psycopg2
    except ImportError:
        return ()
    return (psycopg2.Error,)


if __name__ == "__main__":
    sys.exit(main())
