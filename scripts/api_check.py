#!/usr/bin/env python3
"""Checks the HTTP API against its OpenAPI document, on a live daemon.

1. Creates a fresh database on $DATABASE_URL's server (named like the test
   kit's, fanfare_test_<pid>_<hex>, so scripts/test sweeps it up should this
   script be killed), and a loopback page server for the crawls.
2. Starts the debug `fanfare serve` binary ($FANFARE_BIN, default
   $CARGO_TARGET_DIR/debug/fanfare) with a throwaway configuration: port 0
   (the bound port is read from its "fanfare is serving" log line),
   private networks open, a trigger-only schedule and a cron schedule whose
   pages are on the loopback page server and crawled in-process, so the
   runs schemathesis triggers are harmless. Waits for /readyz.
3. Starts two runs and waits for them to finish, so that the run and page
   endpoints have data to answer with.
4. Validates /openapi.json with openapi-spec-validator.
5. Runs `schemathesis run` against the daemon with every check, the admin
   token on every request and a bounded number of examples per operation
   (FANFARE_API_EXAMPLES, default 40). The run ids of step 3 are the
   examples of the `id` path parameter (alongside generated ones), so the
   run endpoints answer with real runs too.

The daemon, the page server and the database are stopped and dropped at
exit, whatever happens. Exit status: schemathesis' (0 when every check
passed), or 1 when the setup fails. Needs psql, openapi-spec-validator and
schemathesis on PATH (scripts/test puts its venv there).
"""

import http.server
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ADMIN_TOKEN = secrets.token_hex(24)
CALLBACK_SECRET = secrets.token_hex(24)


def log(message):
    print(f"api_check: {message}", flush=True)


def fail(message):
    log(f"error: {message}")
    sys.exit(1)


class PageHandler(http.server.BaseHTTPRequestHandler):
    """A product page for every path, quickly."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = (
            b"<html><head><title>A product</title></head>"
            b'<body><h1>Product</h1><span class="price">9.99</span></body></html>'
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def psql(database_url, sql):
    subprocess.run(
        ["psql", database_url, "-w", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )


def database_url_for(server_url, name):
    """$DATABASE_URL with its database name replaced."""
    base, _, query = server_url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{name}" + (f"?{query}" if query else "")


def config(database_url, pages_base):
    return f"""
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:0"
shutdown_grace = "5s"

[database]
url = "{database_url}"
max_connections = 8

[security]
callback_secret = "{CALLBACK_SECRET}"
admin_token = "{ADMIN_TOKEN}"
# The pages are on the loopback page server.
allow_private_networks = true
# schemathesis probes each operation with a wrong token (ignored_auth), all
# from 127.0.0.1: past the default 10 the daemon would lock it out (429)
# and refuse its right token too. The lockout itself is tested in tests/it.
lockout_after_failures = 1000000

[notify]
timeout = "2s"

[[schedules]]
name = "adhoc"
invoker = "local"
pages = {{ urls = ["{pages_base}/a", "{pages_base}/b", "{pages_base}/c"] }}
extract = {{ price = ".price", name = "h1" }}
max_attempts = 1
page_timeout = "30s"

[[schedules]]
name = "nightly"
cron = "0 0 3 * * *"
timezone = "America/Chicago"
invoker = "local"
pages = {{ urls = ["{pages_base}/n"] }}
max_attempts = 1
"""


def request(base, method, path, token=ADMIN_TOKEN):
    req = urllib.request.Request(base + path, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_for_port(daemon, lines, within):
    """The port of the daemon's "fanfare is serving" log line."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            fail(f"fanfare serve exited with {daemon.returncode}:\n" + "".join(lines[-20:]))
        for line in list(lines):
            if "fanfare is serving" in line:
                match = re.search(r'"port":\s*(\d+)', line)
                if match:
                    return int(match.group(1))
        time.sleep(0.1)
    fail(f"fanfare serve did not log that it is serving within {within}s:\n" + "".join(lines[-20:]))


def wait_until(what, within, check):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    fail(f"{what} within {within}s")


def main():
    server_url = os.environ.get("DATABASE_URL") or fail("DATABASE_URL is not set")
    target_dir = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = os.environ.get("FANFARE_BIN", os.path.join(target_dir, "debug", "fanfare"))
    if not os.access(binary, os.X_OK):
        fail(f"{binary} is not an executable: build it first (cargo build --bin fanfare)")
    examples = os.environ.get("FANFARE_API_EXAMPLES", "25")
    for tool, hint in [
        ("psql", "PostgreSQL's client (Debian: apt-get install postgresql-client)"),
        ("openapi-spec-validator", "pip install -r scripts/requirements-test.txt"),
        ("schemathesis", "pip install -r scripts/requirements-test.txt"),
    ]:
        if shutil.which(tool) is None:
            fail(f"{tool} not found on PATH: {hint}")

    cleanups = []

    def cleanup(*_):
        while cleanups:
            try:
                cleanups.pop()()
            except Exception as e:  # noqa: BLE001 (best effort at exit)
                log(f"cleanup: {e}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PageHandler)
        threading.Thread(target=pages.serve_forever, daemon=True).start()
        cleanups.append(pages.shutdown)
        pages_base = f"http://127.0.0.1:{pages.server_address[1]}"

        name = f"fanfare_test_{os.getpid()}_{uuid.uuid4().hex}"
        psql(server_url, f'create database "{name}"')
        cleanups.append(lambda: psql(server_url, f'drop database if exists "{name}" with (force)'))
        database_url = database_url_for(server_url, name)

        workdir = tempfile.mkdtemp(prefix="fanfare-api-check-")
        keep = {"workdir": True}
        cleanups.append(
            lambda: shutil.rmtree(workdir) if not keep["workdir"] else log(f"kept {workdir}")
        )
        config_path = os.path.join(workdir, "fanfare.toml")
        with open(config_path, "w") as f:
            f.write(config(database_url, pages_base))
        os.chmod(config_path, 0o600)

        env = {**os.environ, "FANFARE_LOG_FORMAT": "json", "RUST_LOG": "info"}
        daemon = subprocess.Popen(
            [binary, "serve", "--config", config_path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        log_path = os.path.join(workdir, "fanfare.log")

        def stop_daemon():
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()

        cleanups.append(stop_daemon)
        lines, errors = [], []

        def drain():
            with open(log_path, "w") as out:
                for line in daemon.stderr:
                    lines.append(line)
                    del lines[:-200]
                    if '"level":"ERROR"' in line:
                        errors.append(line)
                    out.write(line)

        threading.Thread(target=drain, daemon=True).start()
        port = wait_for_port(daemon, lines, 60)
        base = f"http://127.0.0.1:{port}"
        log(f"fanfare serve on {base} (log: {log_path}), database {name}")
        wait_until(
            "/readyz did not answer 200",
            60,
            lambda: request(base, "GET", "/readyz", token=None)[0] == 200,
        )

        run_ids = []
        for schedule in ("adhoc", "nightly"):
            status, body = request(base, "POST", f"/v1/schedules/{schedule}/trigger")
            if status != 202:
                fail(f"triggering {schedule}: {status} {body}")
            run_ids.append(body["run_id"])
        for run_id in run_ids:
            wait_until(
                f"run {run_id} did not finish",
                60,
                lambda: request(base, "GET", f"/v1/runs/{run_id}")[1]["status"] == "finished",
            )

        spec_path = os.path.join(workdir, "openapi.json")
        with urllib.request.urlopen(base + "/openapi.json", timeout=10) as resp:
            spec = json.loads(resp.read())
        with open(spec_path, "w") as f:
            json.dump(spec, f, indent=1)
        log(f"openapi-spec-validator {spec_path}")
        subprocess.run(["openapi-spec-validator", spec_path], check=True)

        # The finished runs as examples of the run id, next to generated ones.
        for path, item in spec["paths"].items():
            for op in item.values():
                for param in op.get("parameters", []):
                    if param["in"] == "path" and param["name"] == "id":
                        param["examples"] = {
                            f"run{i}": {"value": run_id} for i, run_id in enumerate(run_ids)
                        }
        with open(spec_path, "w") as f:
            json.dump(spec, f, indent=1)

        command = [
            "schemathesis",
            "run",
            spec_path,
            "--url",
            base,
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {ADMIN_TOKEN}",
            "--max-examples",
            examples,
            "--seed",
            os.environ.get("FANFARE_API_SEED", str(secrets.randbelow(2**31))),
            "--report",
            "junit",
            "--report-dir",
            workdir,
            "--output-sanitize",
            "true",
        ]
        log(" ".join(c if "Bearer" not in c else "Authorization: Bearer [admin token]" for c in command))
        result = subprocess.run(command, cwd=workdir)
        if daemon.poll() is not None:
            log(f"fanfare serve died during the run (exit {daemon.returncode}):")
            sys.stdout.write("".join(lines[-30:]))
            return 1
        if errors:
            log("the daemon logged errors during the run:")
            sys.stdout.write("".join(errors[-10:]))
            return 1
        keep["workdir"] = result.returncode != 0
        return result.returncode
    finally:
        cleanup()


if __name__ == "__main__":
    sys.exit(main())
