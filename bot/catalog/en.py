"""English payer texts, keyed; placeholders are formatted by bot.messages."""

from __future__ import annotations

from datetime import date, datetime, time

# Keys with a dot are fragments rendered inside other messages, never sent alone.
MESSAGES: dict[str, str] = {
    # Consent: opt-out, opt-in, double opt-in enrollment.
    "opted_out": (
        "You're unsubscribed from {agency} texts. No more messages will be sent. "
        "Reply START to resubscribe."
    ),
    "opted_in": (
        "{agency}: You're subscribed again to payment and appointment texts, "
        "about {per_month} msgs/month. Msg & data rates may apply. "
        "Reply HELP for help, STOP to opt out."
    ),
    "optin_invite": (
        "{agency}: Reply YES to get payment and appointment texts for case ending "
        "{case_last4}, about {per_month} msgs/month. Msg & data rates may apply. "
        "Reply STOP to opt out."
    ),
    "welcome": (
        "{agency}: You're signed up. We'll text you due-date reminders, appointment reminders "
        "and payment receipts, about {per_month} msgs/month. Msg & data rates may apply. "
        "Reply HELP for help, STOP to opt out."
    ),
    "confirm_enrollment": (
        "{agency}: Please reply YES to get payment and appointment texts, about {per_month} "
        "msgs/month, or STOP to opt out. Msg & data rates may apply."
    ),
    "invite_declined": (
        "{agency}: OK, you won't get texts about the new case. Texts about your other case "
        "continue. Reply MENU for options."
    ),
    "enroll_declined": (
        "{agency}: OK, you won't get texts from us. No more messages will be sent. "
        "Reply START if you change your mind."
    ),
    "try_again": (
        "{agency}: Sorry, we could not process your message. Please try again in a few "
        "minutes or call {agency_phone}."
    ),
    "unknown_number": (
        "{agency}: We couldn't find a case for this phone number. "
        "Please call {agency_phone}. Msg & data rates may apply. Reply STOP to opt out."
    ),
    # Conversation.
    "help": (
        "{agency}: Payment and appointment texts for your case, about {per_month} msgs/month. "
        "Msg & data rates may apply. For help call {agency_phone}. "
        "Reply MENU for options, STOP to opt out."
    ),
    "help_opted_out": (
        "{agency}: You are unsubscribed and get no texts from us. Msg & data rates may apply. "
        "For help call {agency_phone}. Reply START to get texts again."
    ),
    # HELP from a number on no case that opted out: no case texts to promise it.
    "help_opted_out_no_case": (
        "{agency}: This number is unsubscribed and gets no texts from us, and we couldn't find "
        "a case for it. For help call {agency_phone}. Msg & data rates may apply. "
        "Reply START to opt back in."
    ),
    "thanks": "You're welcome. Reply MENU for options.",
    "request_dropped": "OK, nothing was done. Reply MENU for options.",
    "menu": (
        "{agency}. Reply with a number:\n1 Pay\n2 Balance\n3 Payment history\n4 Appointments\n"
        "5 Talk to a person\n6 Español\n0 Help"
    ),
    "language_set": "OK, we'll text you in English. Reply ESPAÑOL for Spanish.",
    "choose_case": (
        "You have more than one case. Reply with the ending of the case you mean: {cases}"
    ),
    "case_not_found": (
        "None of your cases ends in {digits}. Reply with the ending of one of them: {cases}"
    ),
    "case_selected": "OK, now using case ending {case_last4}. Reply MENU for options.",
    "word.or": "or",
    # A balance below zero, in a receipt or a refund: the payer paid more than was owed.
    "balance.credit": "{amount} in credit",
    # Paying by text.
    # {processing}: a payment not through yet, said wherever paying again may be a mistake.
    "processing.payment": "A payment of {amount} from {date} is still processing.",
    "pay_quote": (
        "Pay {amount} on case ending {case_last4} with your {brand} card ending {last4}? "
        "Due {due_date}.{processing} Reply YES within {minutes} minutes to pay, "
        "or NO if you do not want to."
    ),
    "pay_quote_no_due": (
        "Pay {amount} on case ending {case_last4} with your {brand} card ending {last4}?"
        "{processing} Reply YES within {minutes} minutes to pay, or NO if you do not want to."
    ),
    "quote_expired": "Your last payment offer expired, so nothing was charged.",
    "confirm_prompt": (
        "Reply YES to pay {amount} with your card ending {last4}, or NO if you do not want to."
    ),
    "pay_processing": (
        "Thank you. Your payment of {amount} is being processed. We'll text your receipt shortly."
    ),
    "pay_cancelled": (
        "OK, the payment is canceled and nothing was charged. Reply PAY to start again."
    ),
    "nothing_to_confirm": (
        "There's no payment waiting for your OK. Reply PAY to make a payment or MENU for options."
    ),
    "nothing_owed": "Case ending {case_last4} has no balance. Nothing is owed right now.",
    "pay_ask_amount": (
        "No payment is due right now on case ending {case_last4}. Your balance is {balance}."
        "{processing} To pay toward it, reply PAY and an amount, like PAY 50."
    ),
    "pay_covered": (
        "Your {amount_due} payment due {due_date} on case ending {case_last4} is covered. "
        "Your balance is {balance}.{processing} To pay more, reply PAY and an amount, like PAY 50."
    ),
    "amount_format": (
        "Please reply PAY and an amount in dollars and cents, like PAY 50 or PAY 125.50."
    ),
    "amount_too_small": (
        "The smallest payment by text is {minimum}. Reply PAY and a larger amount."
    ),
    "balance_too_small": (
        "Case ending {case_last4} owes {balance}, less than the smallest payment by text "
        "({minimum}). To pay it, call {agency_phone}."
    ),
    "amount_over_balance": (
        "That's more than your balance of {balance}. Reply PAY and an amount up to {balance}."
    ),
    "amount_over_available": (
        "A payment of {amount} is still processing, so {available} of your {balance} balance "
        "is left to pay. Reply PAY and an amount up to {available}."
    ),
    "balance_processing": (
        "A payment of {amount} is still processing and covers your {balance} balance. "
        "There is nothing more to pay for now."
    ),
    "amount_over_cap": (
        "The most you can pay by text at one time is {cap}. "
        "Reply PAY and a smaller amount, or call {agency_phone}."
    ),
    "amount_over_monthly": (
        "You can pay up to {cap} a month by text, and {remaining} is left this month. "
        "Reply PAY and a smaller amount, or call {agency_phone}."
    ),
    "monthly_limit_reached": (
        "You've reached this month's limit of {cap} for payments by text. "
        "Please call {agency_phone} to pay."
    ),
    "card_link": (
        "{agency}: To pay by text, first add a debit or credit card here: {url} Then reply PAY."
    ),
    "card_replace": (
        "{agency}: To replace your card ending {last4}, add the new card here: {url} "
        "Then reply PAY."
    ),
    "card_saved": "{agency}: Your card ending {last4} is saved. Reply PAY to make a payment.",
    # Case information.
    "balance": (
        "Case ending {case_last4}: balance {balance}. Next payment: {amount_due} due {due_date}."
        "{processing} Reply PAY to pay."
    ),
    "balance_covered": (
        "Case ending {case_last4}: balance {balance}. Your {amount_due} payment due {due_date} "
        "is covered.{processing} To pay more, reply PAY and an amount."
    ),
    "balance_no_due": (
        "Case ending {case_last4}: balance {balance}.{processing} No payment is scheduled right "
        "now. Reply PAY and an amount to pay."
    ),
    "history": "Recent payments on case ending {case_last4}:\n{payments}",
    "history_none": "No payments yet on case ending {case_last4}.",
    "history.succeeded": "{date}: {amount}, card {last4}",
    "history.pending": "{date}: {amount}, card {last4} (processing)",
    "history.refunded": "{date}: {amount}, card {last4} (refunded)",
    "appt_next": "You have {kind} on {when} at {location}.",
    "appt_next_video": "You have {kind} on {when}. Join by video: {video_link}",
    "appt_next_both": "You have {kind} on {when} at {location}, or join by video: {video_link}",
    "appt_next_no_place": "You have {kind} on {when}. Call {agency_phone} for details.",
    "appt_none": "You have no upcoming appointments on case ending {case_last4}.",
    "kind.case_conference": "a case conference",
    "kind.court_hearing": "a court hearing",
    "kind.virtual_counter": "a virtual counter meeting",
    "kind.other": "an appointment",
    "agent_open": "Thanks. We're open, so a staff member will text you back shortly.",
    "agent_closed": (
        "Thanks. We're closed now. A staff member will text you after we open {opens_at}."
    ),
    # Sent by billing, reminder jobs and staff.
    "receipt": (
        "{agency}: Payment received, thank you. {amount} on {date}, card ending {last4}. "
        "Confirmation {code}. New balance: {balance}. Posting can take up to 2 business days."
    ),
    "late_receipt": (
        "{agency}: Your payment of {amount} from {date}, card ending {last4}, did go through "
        "after all, though we texted that it had not. Confirmation {code}. If you have paid "
        "again since, call {agency_phone}."
    ),
    "declined": (
        "{agency}: Your payment of {amount} was declined. {reason} Nothing was charged. "
        "Update your card here, then reply PAY: {url}"
    ),
    "reason.insufficient_funds": "The card doesn't have enough funds.",
    "reason.expired_card": "The card has expired.",
    "reason.incorrect_cvc": "The security code (CVC) was wrong.",
    "reason.card_not_supported": "This type of card isn't accepted.",
    "reason.processing_error": "There was a processing error.",
    "reason.other": "Your bank did not approve it.",
    "auth_required": (
        "{agency}: Your bank needs you to approve the payment of {amount}. "
        "Open this link to finish: {url} Nothing is charged until you approve."
    ),
    "approval_expired": (
        "{agency}: The time to approve your payment of {amount} has run out, so we canceled it "
        "and nothing was charged. Reply PAY to try again or call {agency_phone}."
    ),
    "payment_failed": (
        "{agency}: Your payment of {amount} did not go through, and nothing was charged. "
        "Reply PAY to try again or call {agency_phone}."
    ),
    "refund": (
        "{agency}: We refunded {amount} to your card ending {last4}. New balance: {balance}."
    ),
    "due_soon": (
        "{agency}: Your payment of {amount} for case ending {case_last4} is due {due_date}. "
        "Reply PAY to pay {amount} with your card ending {last4}. Reply STOP to opt out."
    ),
    "due_soon_no_card": (
        "{agency}: Your payment of {amount} for case ending {case_last4} is due {due_date}. "
        "Reply PAY to add a card and pay by text. Reply STOP to opt out."
    ),
    "due_today": (
        "{agency}: Your payment of {amount} for case ending {case_last4} is due today, "
        "{due_date}. Reply PAY to pay {amount} with your card ending {last4}. "
        "Reply STOP to opt out."
    ),
    "due_today_no_card": (
        "{agency}: Your payment of {amount} for case ending {case_last4} is due today, "
        "{due_date}. Reply PAY to add a card and pay by text. Reply STOP to opt out."
    ),
    "overdue": (
        "{agency}: Your payment of {amount} for case ending {case_last4} was due {due_date} "
        "and is past due. Reply PAY to pay {amount} with your card ending {last4}. "
        "Reply STOP to opt out."
    ),
    "overdue_no_card": (
        "{agency}: Your payment of {amount} for case ending {case_last4} was due {due_date} "
        "and is past due. Reply PAY to add a card and pay by text. Reply STOP to opt out."
    ),
    "appt_reminder": (
        "{agency} reminder: you have {kind} on {when} at {location}. "
        "Reply APPT for details, STOP to opt out."
    ),
    "appt_reminder_video": (
        "{agency} reminder: you have {kind} on {when}. Join by video: {video_link} "
        "Reply STOP to opt out."
    ),
    "appt_reminder_both": (
        "{agency} reminder: you have {kind} on {when} at {location}, or join by video: "
        "{video_link} Reply STOP to opt out."
    ),
    "appt_reminder_no_place": (
        "{agency} reminder: you have {kind} on {when}. Call {agency_phone} for details. "
        "Reply STOP to opt out."
    ),
    "appt_canceled": (
        "{agency}: You no longer have {kind} on {when}: it was canceled. "
        "Questions? Call {agency_phone}. Reply STOP to opt out."
    ),
    "appt_moved": (
        "{agency}: Your appointment has a new time. You now have {kind} on {when}. "
        "Reply APPT for details, STOP to opt out."
    ),
    "staff_reply": "{agency}: {text}",
    # Payer web pages (card and payment approval); fragments, never texted.
    "page.lang_switch": "Español",
    "page.footer": "{agency}. Questions? Call {agency_phone}.",
    "page.working": "Please wait...",
    "page.card_title": "Add a card",
    "page.card_intro": (
        "Save a debit or credit card for case ending {case_last4}. We charge it only when you "
        "confirm a payment by text."
    ),
    "page.card_replaces": "This replaces your {brand} card ending {last4}.",
    "page.card_details": "Card details",
    "page.card_number": "Card number",
    "page.card_exp_month": "Expiration month (MM)",
    "page.card_exp_year": "Expiration year (YY)",
    "page.card_cvc": "Security code (CVC)",
    "page.card_save": "Save card",
    "page.card_sandbox_note": "Test mode: no real card is charged. Use one of these test cards:",
    "page.card_saved_title": "Card saved",
    "page.card_saved": "Your {brand} card ending {last4} is saved. To pay, reply PAY to our text.",
    "page.card_error.invalid_number": "That card number is not valid. Please check it.",
    "page.card_error.not_test_card": "In test mode only the test card numbers below work.",
    "page.card_error.invalid_expiry_month": "The expiration month is not valid.",
    "page.card_error.invalid_expiry_year": "The expiration date is not valid or has passed.",
    "page.card_error.invalid_cvc": "The security code is not valid.",
    "page.card_error.setup_incomplete": "Your card was not saved. Please enter it again.",
    "page.card_error.other": "We could not save the card. Please try again.",
    "page.link_title": "This link does not work",
    "page.link_expired": (
        "This link has expired or was already used. For a new one, reply CARD to our text "
        "or call {agency_phone}."
    ),
    "page.link_invalid": (
        "This link is not valid. Please open the link exactly as it is in our text, "
        "or call {agency_phone}."
    ),
    "page.auth_title": "Approve your payment",
    "page.auth_intro": (
        "Your bank asks you to approve the payment of {amount} with your card ending {last4}. "
        "Nothing is charged until you approve."
    ),
    "page.auth_button": "Approve payment",
    "page.auth_sandbox_note": "Test mode: this button approves the payment as your bank would.",
    "page.auth_done_title": "Payment approved",
    "page.auth_done": "Thank you. Your payment of {amount} went through. We'll text your receipt.",
    "page.auth_failed_title": "Payment not approved",
    "page.auth_failed": (
        "Your bank did not approve the payment of {amount}, and nothing was charged. "
        "Reply PAY to our text to try again, or call {agency_phone}."
    ),
    "page.auth_closed": "This payment is no longer waiting for approval. There is nothing to do.",
    "page.error_title": "Please try again",
    "page.form_refused": (
        "We could not check this page, so nothing was saved or charged. Please open the link "
        "in our text again. If this keeps happening, call {agency_phone}."
    ),
    "page.try_later": (
        "We could not reach the payment processor, so nothing was charged or saved. "
        "Please try again in a few minutes."
    ),
}

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def format_date(day: date) -> str:
    """'Dec 1'."""
    return f"{_MONTHS[day.month - 1]} {day.day}"


def format_time(moment: time) -> str:
    """'4:30 PM'."""
    return f"{moment.hour % 12 or 12}:{moment.minute:02d} {'AM' if moment.hour < 12 else 'PM'}"


def format_when(moment: datetime) -> str:
    """'Mon, Dec 1 at 4:30 PM' (moment already in local time)."""
    return f"{_WEEKDAYS[moment.weekday()]}, {format_date(moment)} at {format_time(moment.time())}"
