"""`rq cron` configuration: `rq cron --url "$REDIS_URL" jobs/cron.py` (the Procfile's `cron`).

Dispatch runs every REMINDER_DISPATCH_SECONDS (60 by default), and queues with the reminders
the opt-in invitations held for payers' quiet hours whose window has opened; planning runs
every hour, and every 5 minutes payments whose charge job was lost are queued again, payments
still waiting for bank approval when their approval link expired are canceled, and payment
texts a crash left unsent are sent. Two cron processes at once do no harm: dispatch claims
each row once, planning is idempotent, and a charge is keyed by its payment.
"""

from __future__ import annotations

from rq import cron

import settings
from billing.jobs import resume_payments
from jobs.tasks import dispatch_reminders, plan_reminders

# Checked as the web app and the worker check them: a bad setting stops this process too.
_every = settings.load()["REMINDER_DISPATCH_SECONDS"]

cron.register(
    dispatch_reminders,
    "default",
    interval=_every,
    job_timeout=300,
    # A dispatch no worker picked up before the next one is due is dropped, not stacked up.
    ttl=max(_every, 30),
    result_ttl=600,
)
cron.register(plan_reminders, "default", cron="7 * * * *", job_timeout=1800, result_ttl=3600)
cron.register(resume_payments, "payments", interval=300, job_timeout=300, ttl=300, result_ttl=600)
