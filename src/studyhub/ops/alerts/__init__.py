"""Alerts: signals (doctor checks, scheduled jobs) → deduplicated alerts (``engine``: change of
state, repeat while it lasts, resolved, flap damping, state kept in a JSON file) → channels
(``channels``: a Slack-compatible webhook, e-mail over SMTP with TLS), configured by
``[agent.alerts]`` (``settings``). See docs/agent-alerts.md."""

from studyhub.ops.alerts.channels import Delivery, deliver, slack_body, summary_line
from studyhub.ops.alerts.engine import (
    Alert,
    AlertEngine,
    Signal,
    check_number,
    signal_from_job,
    signals_from_doctor,
)
from studyhub.ops.alerts.settings import (
    SMTP_PASSWORD_ENV,
    AlertSettings,
    EmailSettings,
    WebhookSettings,
    parse_alert_settings,
)

__all__ = [
    "SMTP_PASSWORD_ENV", "Alert", "AlertEngine", "AlertSettings", "Delivery", "EmailSettings",
    "Signal", "WebhookSettings", "check_number", "deliver", "parse_alert_settings",
    "signal_from_job", "signals_from_doctor", "slack_body", "summary_line",
]
