"""Sending alerts: a Slack-compatible webhook (JSON ``text`` + ``blocks``, POSTed with a timeout
and retried with backoff) and e-mail over SMTP (STARTTLS or implicit TLS, verified against the
system's CAs or ``ca_file``). One message per batch and channel.

``deliver`` never raises: each channel's outcome is a ``Delivery`` whose ``error`` is one line
naming the channel by its label (never the webhook URL, which holds its token, never the SMTP
password). The webhook is sent with urllib, not httpx, whose INFO log line carries the URL.
"""

from __future__ import annotations

import http.client
import json
import logging
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Callable

from studyhub.errors import ConfigError
from studyhub.ops.alerts.engine import Alert
from studyhub.ops.alerts.settings import AlertSettings, EmailSettings, WebhookSettings

__all__ = ["Delivery", "deliver", "email_message", "send_email", "send_webhook",
           "slack_body", "summary_line"]

log = logging.getLogger("studyhub.ops.alerts")

MAX_BLOCK_ALERTS = 20  # Slack allows 50 blocks per message; the rest are counted
_ICONS = {"critical": ":red_circle:", "warn": ":large_yellow_circle:", "ok": ":white_check_mark:"}
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Delivery:
    channel: str  # the channel's label: "webhook NAME", "email via HOST:PORT"
    ok: bool
    alerts: int
    attempts: int
    error: str | None = None  # one line, no secret


# ------------------------------------------------------------------ the text

def _headline(a: Alert) -> str:
    if a.kind == "resolved":
        return f"RESOLVED {a.title}"
    if a.kind == "flapping":
        return f"FLAPPING {a.title} (changing state too often; silent until it is stable)"
    word = a.status.upper()
    if a.kind == "repeat":
        return f"{word} (still) {a.title}"
    if a.previous == "flapping":
        return f"{word} {a.title} (stopped flapping)"
    if a.kind == "changed":
        return f"{word} {a.title} (was {a.previous})"
    return f"{word} {a.title}"


def _line(a: Alert) -> str:
    parts = [_headline(a)]
    if a.value not in (None, "") and a.kind != "flapping":
        parts.append(f"value: {a.value}")
    if a.detail and a.kind not in ("resolved", "flapping"):
        parts.append(a.detail)
    return " — ".join(parts)


def summary_line(alerts: list[Alert]) -> str:
    """"studyhub: 2 critical, 1 resolved" (the e-mail subject, the webhook's fallback text)."""
    counts: dict[str, int] = {}
    for a in alerts:
        word = a.kind if a.kind in ("resolved", "flapping") else a.status
        counts[word] = counts.get(word, 0) + 1
    order = ("critical", "warn", "flapping", "resolved", "ok")
    text = ", ".join(f"{counts[w]} {w}" for w in order if w in counts)
    if len(alerts) == 1:
        text = _headline(alerts[0])
    return f"studyhub: {text}"


def _escape_mrkdwn(text: str) -> str:
    # Slack's three control characters; the rest of mrkdwn is harmless in our text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(alerts: list[Alert]) -> dict[str, Any]:
    """A Slack-compatible incoming-webhook body: ``text`` (the fallback and what non-Slack
    receivers such as Mattermost or a plain JSON endpoint read) and ``blocks``."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": summary_line(alerts)[:150]}}]
    for a in alerts[:MAX_BLOCK_ALERTS]:
        icon = _ICONS["ok"] if a.kind == "resolved" else _ICONS.get(a.status, "")
        if a.kind == "flapping":
            icon = ":warning:"
        text = f"{icon} *{_escape_mrkdwn(_headline(a))}*"
        if a.value not in (None, "") and a.kind != "flapping":
            text += f"\nvalue: `{_escape_mrkdwn(str(a.value))}`"
        if a.detail and a.kind not in ("resolved", "flapping"):
            text += f"\n{_escape_mrkdwn(a.detail)}"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
        since = f" · since {a.since:%Y-%m-%d %H:%M:%S} UTC" if a.since and a.kind != "resolved" \
            else ""
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"`{_escape_mrkdwn(a.key)}` · {a.source}{since}"}]})
    if len(alerts) > MAX_BLOCK_ALERTS:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"… and {len(alerts) - MAX_BLOCK_ALERTS} more"}]})
    text = "\n".join([summary_line(alerts)] + [f"• {_line(a)}" for a in alerts])
    return {"text": text, "blocks": blocks}


def email_message(alerts: list[Alert], settings: EmailSettings) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = summary_line(alerts)[:200]
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=settings.sender.rsplit("@", 1)[1])
    lines = [summary_line(alerts), ""]
    for a in alerts:
        lines.append(_line(a))
        when = f"at {a.at:%Y-%m-%d %H:%M:%S} UTC"
        if a.since and a.kind != "resolved":
            when += f", since {a.since:%Y-%m-%d %H:%M:%S} UTC"
        lines.append(f"  key {a.key} ({a.source}), {when}")
        lines.append("")
    lines.append("-- sent by studyhub agent (docs/agent-alerts.md)")
    msg.set_content("\n".join(lines))
    return msg


# ------------------------------------------------------------------ the channels

def _redact(text: str, *secrets: str) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def send_webhook(alerts: list[Alert], hook: WebhookSettings,
                 sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST the batch; retried on network errors, 408/425/429 and 5xx with doubling backoff."""
    try:
        url = hook.url().get_secret_value()
    except ConfigError as exc:
        return Delivery(hook.label, False, len(alerts), 0, str(exc))
    data = json.dumps(slack_body(alerts)).encode()
    error = None
    attempt = 0
    for attempt in range(1, hook.attempts + 1):
        if attempt > 1:
            sleep(hook.backoff_s * 2 ** (attempt - 2))
        req = urllib.request.Request(url, data=data, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "User-Agent": "studyhub-agent"})
        try:
            with urllib.request.urlopen(req, timeout=hook.timeout_s) as resp:  # noqa: S310
                resp.read(65536)
            return Delivery(hook.label, True, len(alerts), attempt)
        except urllib.error.HTTPError as exc:
            exc.close()
            error = f"{hook.label}: HTTP {exc.code}"
            if exc.code not in _RETRY_HTTP:
                break
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = (reason.strerror or type(reason).__name__) if isinstance(reason, OSError) \
                else type(reason).__name__ if isinstance(reason, BaseException) else "bad URL"
            error = f"{hook.label}: cannot connect ({why})"
        except (TimeoutError, socket.timeout):
            error = f"{hook.label}: no answer within {hook.timeout_s:g}s"
        except (OSError, ValueError, http.client.HTTPException) as exc:
            error = f"{hook.label}: {type(exc).__name__}"
    return Delivery(hook.label, False, len(alerts), attempt,
                    _redact(error or f"{hook.label}: failed", url))


def _tls_context(settings: EmailSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=settings.ca_file)


def send_email(alerts: list[Alert], settings: EmailSettings) -> Delivery:
    """One message to every recipient. TLS is verified (host name and chain); ``tls = none``
    is only accepted for a loopback relay (settings refuse it otherwise)."""
    label = settings.label
    try:
        password = settings.password()
    except ConfigError as exc:
        return Delivery(label, False, len(alerts), 0, str(exc))
    secret = password.get_secret_value() if password else ""
    msg = email_message(alerts, settings)
    phase = "connect"
    try:
        if settings.tls == "tls":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port,
                                                  timeout=settings.timeout_s,
                                                  context=_tls_context(settings))
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
        with smtp:
            if settings.tls == "starttls":
                phase = "STARTTLS"
                smtp.starttls(context=_tls_context(settings))
            if settings.username:
                phase = "login"
                smtp.login(settings.username, secret)
            phase = "sending"
            refused = smtp.send_message(msg)
        if refused:
            return Delivery(label, False, len(alerts), 1,
                            f"{label}: {len(refused)} recipient(s) refused")
        return Delivery(label, True, len(alerts), 1)
    except smtplib.SMTPAuthenticationError as exc:
        error = f"{label}: login as {settings.username} refused (SMTP {exc.smtp_code})"
    except smtplib.SMTPNotSupportedError:
        error = f"{label}: the server does not offer STARTTLS (or AUTH)"
    except smtplib.SMTPResponseException as exc:
        error = f"{label}: SMTP {exc.smtp_code} during {phase}"
    except smtplib.SMTPServerDisconnected:
        error = f"{label}: the server closed the connection during {phase}"
    except smtplib.SMTPException as exc:
        error = f"{label}: {type(exc).__name__} during {phase}"
    except ssl.SSLCertVerificationError as exc:
        error = f"{label}: TLS certificate not trusted ({exc.verify_message})"
    except ssl.SSLError as exc:
        error = f"{label}: TLS failed ({exc.reason or type(exc).__name__})"
    except (TimeoutError, socket.timeout):
        error = f"{label}: no answer within {settings.timeout_s:g}s"
    except OSError as exc:
        error = f"{label}: cannot connect ({exc.strerror or type(exc).__name__})"
    return Delivery(label, False, len(alerts), 1, _redact(error, secret))


def deliver(alerts: list[Alert], settings: AlertSettings) -> list[Delivery]:
    """Send ``alerts`` (one batch) to every configured channel; never raises. Failures are
    logged (one line each, no secrets) and returned."""
    if not alerts:
        return []
    out = []
    for hook in settings.webhook:
        out.append(_guard(hook.label, alerts, lambda h=hook: send_webhook(alerts, h)))
    if settings.email is not None:
        email = settings.email
        out.append(_guard(email.label, alerts, lambda: send_email(alerts, email)))
    for d in out:
        if d.ok:
            log.info("alerts: %d sent to %s", d.alerts, d.channel)
        else:
            log.warning("alerts: %d NOT sent: %s", d.alerts, d.error)
    return out


def _guard(label: str, alerts: list[Alert], send: Callable[[], Delivery]) -> Delivery:
    try:
        return send()
    except Exception as exc:  # a bug must not take the agent down; its text may hold secrets
        return Delivery(label, False, len(alerts), 0, f"{label}: {type(exc).__name__}")
