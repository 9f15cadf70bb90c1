"""The HTTP rules every destination shares, against real servers on loopback: redirects are not
followed, Retry-After is honoured within its cap, every request has a deadline and a body cap."""

import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobs.destinations.http import CredentialsRefused, DeliveryFailed, check_credentials, request, retry_after
from jobs.runtime.settings import RetrySettings

KEY_HEADER = "Authorization"


class Server:
    """Answers each request with the next of ``answers`` (status, headers, body; the last repeats)
    and records what it received."""

    def __init__(self, answers):
        self.answers, self.received = list(answers), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.received.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
                status, headers, body = server.answers.pop(0) if len(server.answers) > 1 else server.answers[0]
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/api"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    made = []

    def start(*answers):
        made.append(Server(answers))
        return made[-1]

    yield start
    for server in made:
        server.stop()


RETRY = RetrySettings(timeout_seconds=5, max_attempts=4, backoff_seconds=0.01, max_retry_after_seconds=120)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_credentials_stay_with_the_origin(serve, status):
    elsewhere = serve((200, {}, b"{}"))
    origin = serve((status, {"Location": elsewhere.url}, b""))
    answer = request("POST", origin.url, b"{}", {KEY_HEADER: "Bearer k"}, RETRY, sleep=lambda s: None)
    assert (answer.status, answer.ok, answer.attempts) == (status, False, 1)  # a failure, not a delivery
    assert elsewhere.received == [] and len(origin.received) == 1


def test_retry_after_in_seconds_or_as_an_http_date_is_waited_on_429_and_503(serve):
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server = serve((429, {"Retry-After": "7"}, b""), (503, {"Retry-After": soon}, b""), (200, {}, b"ok"))
    waits = []
    answer = request("POST", server.url, b"{}", {}, RETRY, sleep=waits.append)
    assert (answer.status, answer.body, answer.attempts) == (200, b"ok", 3)
    assert waits[0] == 7 and 25 < waits[1] <= 30


@pytest.mark.parametrize("value", ["inf", "1e9", "121", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_wait_beyond_the_cap_fails_the_request_at_once(serve, value):
    server = serve((429, {"Retry-After": value}, b""))
    waits = []
    with pytest.raises(DeliveryFailed, match=r"asking to wait .* longer than retry.max_retry_after_seconds"):
        request("POST", server.url, b"{}", {}, RETRY, sleep=waits.append)
    assert waits == [] and len(server.received) == 1


@pytest.mark.parametrize("value", ["soon", "nan", "", "-5"])
def test_an_unreadable_or_negative_retry_after_falls_back_to_backing_off(value):
    assert retry_after(value) in (None, 0.0)


def test_all_attempts_of_a_request_stay_within_its_deadline(serve):
    server = serve((500, {}, b"oops"))
    now = [0.0]
    retry = RETRY.model_copy(update={"max_attempts": 50, "backoff_seconds": 1.0, "deadline_seconds": 10})
    with pytest.raises(DeliveryFailed, match=r"still failing at retry.deadline_seconds \(10 s; last: HTTP 500\)"):
        request("POST", server.url, b"{}", {}, retry, sleep=lambda s: now.__setitem__(0, now[0] + s),
                clock=lambda: now[0], rng=__import__("random").Random(1))
    assert now[0] <= 10 and len(server.received) < 6


def test_an_answer_larger_than_the_cap_is_a_failure(serve):
    server = serve((200, {}, b"x" * 2048))
    with pytest.raises(DeliveryFailed, match="larger than retry.max_response_bytes"):
        request("GET", server.url, None, {}, RETRY.model_copy(update={"max_response_bytes": 1024}))


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_the_destination_with_a_line_naming_it(serve, status):
    server = serve((status, {}, b"no"))
    answer = request("POST", server.url, b"{}", {}, RETRY)
    with pytest.raises(CredentialsRefused, match=rf"^destination webhook: credentials refused \(HTTP {status}\)"):
        check_credentials("webhook", answer)
