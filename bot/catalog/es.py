"""Spanish (US) payer texts, keyed; placeholders are formatted by bot.messages."""

from __future__ import annotations

from datetime import date, datetime, time

# Wording avoids á í ó ú where a natural phrase exists: they are not in the GSM-7 alphabet and
# one of them turns the whole text into UCS-2 (70 characters a segment instead of 160).
# é, ñ, ¿ and ¡ are GSM-7. Keywords are written as payers type them: SI, MENU.
MESSAGES: dict[str, str] = {
    # Consent: opt-out, opt-in, double opt-in enrollment.
    "opted_out": (
        "Se dio de baja de los mensajes de {agency}. Ya no le enviaremos mensajes. "
        "Responda START para volver a suscribirse."
    ),
    "opted_in": (
        "{agency}: Listo, va a recibir de nuevo mensajes de pagos y citas, "
        "unos {per_month} al mes. Pueden aplicarse tarifas de mensajes y datos. "
        "Responda AYUDA para obtener ayuda o STOP para darse de baja."
    ),
    "optin_invite": (
        "{agency}: Responda SI para recibir mensajes de pagos y citas del caso que termina en "
        "{case_last4}, unos {per_month} al mes. Pueden aplicarse tarifas de mensajes y datos. "
        "Responda STOP para darse de baja."
    ),
    "welcome": (
        "{agency}: Gracias por inscribirse. Le enviaremos recordatorios de pagos y citas, "
        "y recibos de pago, unos {per_month} mensajes al mes. "
        "Pueden aplicarse tarifas de mensajes y datos. "
        "Responda AYUDA para obtener ayuda o STOP para darse de baja."
    ),
    "confirm_enrollment": (
        "{agency}: Responda SI para recibir mensajes de pagos y citas, unos {per_month} al mes, "
        "o STOP para darse de baja. Pueden aplicarse tarifas de mensajes y datos."
    ),
    "invite_declined": (
        "{agency}: Listo, no le enviaremos mensajes del caso nuevo, solo los de su otro caso. "
        "Responda MENU para ver opciones."
    ),
    "enroll_declined": (
        "{agency}: Listo, no le enviaremos mensajes. Responda START si cambia de idea."
    ),
    "try_again": (
        "{agency}: Lo sentimos, no pudimos procesar su mensaje. Intente de nuevo en unos "
        "minutos o llame al {agency_phone}."
    ),
    "unknown_number": (
        "{agency}: No encontramos un caso con este teléfono. Llame al {agency_phone}. "
        "Pueden aplicarse tarifas de mensajes y datos. Responda STOP para darse de baja."
    ),
    # Conversation.
    "help": (
        "{agency}: Mensajes de pagos y citas de su caso, unos {per_month} al mes. "
        "Pueden aplicarse tarifas de mensajes y datos. Para ayuda, llame al {agency_phone}. "
        "Responda MENU para ver opciones o STOP para darse de baja."
    ),
    "help_opted_out": (
        "{agency}: Se dio de baja y no recibe mensajes nuestros. Pueden aplicarse tarifas de "
        "mensajes y datos. Para ayuda, llame al {agency_phone}. Responda START para volver a "
        "recibirlos."
    ),
    "help_opted_out_no_case": (
        "{agency}: Este teléfono se dio de baja y no recibe mensajes nuestros, y no encontramos "
        "un caso con este teléfono. Para ayuda, llame al {agency_phone}. Pueden aplicarse "
        "tarifas de mensajes y datos. Responda START para volver a suscribirse."
    ),
    "thanks": "De nada. Responda MENU para ver opciones.",
    "request_dropped": "Listo, no hicimos nada. Responda MENU para ver opciones.",
    "menu": (
        "{agency}. Responda con:\n1 Pagar\n2 Saldo\n3 Historial de pagos\n4 Citas\n"
        "5 Hablar con una persona\n6 English\n0 Ayuda"
    ),
    "language_set": "Listo, le escribiremos en español. Responda ENGLISH para cambiar a inglés.",
    "choose_case": "Tiene varios casos. Para elegir uno, responda {cases}.",
    "case_not_found": (
        "Ninguno de sus casos termina en {digits}. Para elegir uno, responda {cases}."
    ),
    "case_selected": (
        "Listo, ahora usamos el caso que termina en {case_last4}. Responda MENU para ver opciones."
    ),
    "word.or": "o",
    # A balance below zero, in a receipt or a refund: the payer paid more than was owed.
    "balance.credit": "{amount} a su favor",
    # Paying by text.
    # {processing}: a payment not through yet, said wherever paying again may be a mistake.
    "processing.payment": "Un pago de {amount} del {date} sigue en proceso.",
    "pay_quote": (
        "¿Pagar {amount} al caso que termina en {case_last4} con su {brand} terminada en "
        "{last4}? El pago vence el {due_date}.{processing} Responda SI para pagar "
        "(tiene {minutes} minutos) o NO si no desea pagar."
    ),
    "pay_quote_no_due": (
        "¿Pagar {amount} al caso que termina en {case_last4} con su {brand} terminada en "
        "{last4}?{processing} Responda SI para pagar (tiene {minutes} minutos) "
        "o NO si no desea pagar."
    ),
    "quote_expired": "El pago anterior ya no se puede confirmar y no le cobramos nada.",
    "confirm_prompt": (
        "Responda SI para pagar {amount} con su tarjeta terminada en {last4} o NO si no desea "
        "pagar."
    ),
    "pay_processing": (
        "Gracias. Estamos procesando su pago de {amount}. "
        "Le enviaremos el recibo por texto en unos minutos."
    ),
    "pay_cancelled": (
        "Listo, cancelamos el pago y no le cobramos nada. Responda PAGAR para empezar de nuevo."
    ),
    "nothing_to_confirm": (
        "No hay un pago por confirmar. Responda PAGAR para hacer un pago o MENU para ver opciones."
    ),
    "nothing_owed": (
        "El caso que termina en {case_last4} no tiene saldo. No tiene que pagar nada por ahora."
    ),
    "pay_ask_amount": (
        "No tiene pagos programados por ahora en el caso que termina en {case_last4}. "
        "Su saldo es {balance}.{processing} Para abonar, responda PAGAR y el monto, "
        "por ejemplo PAGAR 50."
    ),
    "pay_covered": (
        "Ya tiene cubierto el pago de {amount_due} del caso que termina en {case_last4}, que "
        "vence el {due_date}. Su saldo es {balance}.{processing} Para abonar otro monto, "
        "responda PAGAR y el monto, por ejemplo PAGAR 50."
    ),
    "amount_format": (
        "Responda PAGAR y el monto, por ejemplo PAGAR 50 o PAGAR 125.50, con punto y no con "
        "coma antes de los centavos."
    ),
    "amount_too_small": (
        "El pago por texto debe ser de al menos {minimum}. Responda PAGAR y un monto mayor."
    ),
    "balance_too_small": (
        "El caso que termina en {case_last4} debe {balance}, menos de lo que se puede pagar por "
        "texto ({minimum}). Para pagarlo, llame al {agency_phone}."
    ),
    "amount_over_balance": (
        "Ese monto es mayor que su saldo de {balance}. "
        "Responda PAGAR y un monto de hasta {balance}."
    ),
    "amount_over_available": (
        "Un pago de {amount} sigue en proceso; de su saldo de {balance} quedan {available} "
        "por pagar. Responda PAGAR y un monto de hasta {available}."
    ),
    "balance_processing": (
        "Un pago de {amount} sigue en proceso y cubre su saldo de {balance}. "
        "Por ahora no tiene que pagar nada."
    ),
    "amount_over_cap": (
        "Por texto puede pagar hasta {cap} a la vez. "
        "Responda PAGAR y un monto menor o llame al {agency_phone}."
    ),
    "amount_over_monthly": (
        "Por texto puede pagar hasta {cap} al mes y este mes le quedan {remaining}. "
        "Responda PAGAR y un monto menor o llame al {agency_phone}."
    ),
    "monthly_limit_reached": (
        "Este mes ya ha llegado al tope de {cap} para pagos por texto. "
        "Para pagar, llame al {agency_phone}."
    ),
    "card_link": (
        "{agency}: Para pagar por texto, primero agregue una tarjeta de débito o crédito "
        "en este enlace: {url} Luego responda PAGAR."
    ),
    "card_replace": (
        "{agency}: Para cambiar su tarjeta terminada en {last4}, agregue la nueva en este "
        "enlace: {url} Luego responda PAGAR."
    ),
    "card_saved": (
        "{agency}: Guardamos su tarjeta terminada en {last4}. Responda PAGAR para hacer un pago."
    ),
    # Case information.
    "balance": (
        "Caso que termina en {case_last4}: saldo {balance}. Siguiente pago: {amount_due}, "
        "vence el {due_date}.{processing} Responda PAGAR para pagar."
    ),
    "balance_covered": (
        "Caso que termina en {case_last4}: saldo {balance}. Ya tiene cubierto el pago de "
        "{amount_due} que vence el {due_date}.{processing} Para abonar otro monto, responda "
        "PAGAR y el monto."
    ),
    "balance_no_due": (
        "Caso que termina en {case_last4}: saldo {balance}.{processing} No tiene pagos "
        "programados por ahora. Responda PAGAR y un monto para pagar."
    ),
    "history": "Pagos recientes del caso que termina en {case_last4}:\n{payments}",
    "history_none": "No hay pagos registrados en el caso que termina en {case_last4}.",
    "history.succeeded": "{date}: {amount}, tarjeta {last4}",
    "history.pending": "{date}: {amount}, tarjeta {last4} (en proceso)",
    "history.refunded": "{date}: {amount}, tarjeta {last4} (reembolsado)",
    "appt_next": "Tiene {kind} el {when} en {location}.",
    "appt_next_video": "Tiene {kind} el {when}. Enlace para conectarse por video: {video_link}",
    "appt_next_both": (
        "Tiene {kind} el {when} en {location}, o puede conectarse por video: {video_link}"
    ),
    "appt_next_no_place": "Tiene {kind} el {when}. Para detalles, llame al {agency_phone}.",
    "appt_none": "No tiene citas programadas en el caso que termina en {case_last4}.",
    "kind.case_conference": "una conferencia de caso",
    "kind.court_hearing": "una audiencia en la corte",
    "kind.virtual_counter": "una cita en el mostrador virtual",
    "kind.other": "una cita",
    "agent_open": "Gracias. Un miembro del personal le va a responder por texto en breve.",
    "agent_closed": (
        "Gracias. Ahora estamos cerrados. Un miembro del personal le va a escribir cuando "
        "abramos, el {opens_at}."
    ),
    # Sent by billing, reminder jobs and staff.
    "receipt": (
        "{agency}: Recibimos su pago de {amount} el {date} con la tarjeta terminada en {last4}. "
        "Comprobante: {code}. Nuevo saldo: {balance}. "
        "El pago puede tardar hasta 2 jornadas laborales en reflejarse en su saldo."
    ),
    "late_receipt": (
        "{agency}: Su pago de {amount} del {date} con la tarjeta terminada en {last4} se hizo "
        "de todos modos, aunque le avisamos que no se pudo completar. Comprobante: {code}. "
        "Si hizo otro pago después, llame al {agency_phone}."
    ),
    "declined": (
        "{agency}: Su pago de {amount} fue rechazado. {reason} No le cobramos nada. "
        "Actualice su tarjeta en este enlace: {url} Luego responda PAGAR."
    ),
    "reason.insufficient_funds": "La tarjeta no tiene fondos suficientes.",
    "reason.expired_card": "La tarjeta ha vencido.",
    "reason.incorrect_cvc": "El CVC de la tarjeta no es correcto.",
    "reason.card_not_supported": "No aceptamos este tipo de tarjeta.",
    "reason.processing_error": "Hubo un error al procesar el pago.",
    "reason.other": "Su banco no lo ha aprobado.",
    "auth_required": (
        "{agency}: Su banco necesita que apruebe el pago de {amount}. "
        "Abra este enlace para terminar: {url} No le cobramos nada hasta que lo apruebe."
    ),
    "approval_expired": (
        "{agency}: El plazo para aprobar su pago de {amount} ha vencido. Lo cancelamos y no le "
        "cobramos nada. Responda PAGAR para intentarlo de nuevo o llame al {agency_phone}."
    ),
    "payment_failed": (
        "{agency}: Su pago de {amount} no se pudo completar y no le cobramos nada. "
        "Responda PAGAR para intentarlo de nuevo o llame al {agency_phone}."
    ),
    "refund": (
        "{agency}: Le reembolsamos {amount} a su tarjeta terminada en {last4}. "
        "Nuevo saldo: {balance}."
    ),
    "due_soon": (
        "{agency}: Su pago de {amount} del caso que termina en {case_last4} vence el "
        "{due_date}. Responda PAGAR para pagar {amount} con su tarjeta terminada en {last4}. "
        "Responda STOP para darse de baja."
    ),
    "due_soon_no_card": (
        "{agency}: Su pago de {amount} del caso que termina en {case_last4} vence el "
        "{due_date}. Responda PAGAR para agregar una tarjeta y pagar por texto. "
        "Responda STOP para darse de baja."
    ),
    "due_today": (
        "{agency}: Su pago de {amount} del caso que termina en {case_last4} vence hoy, "
        "{due_date}. Responda PAGAR para pagar {amount} con su tarjeta terminada en {last4}. "
        "Responda STOP para darse de baja."
    ),
    "due_today_no_card": (
        "{agency}: Su pago de {amount} del caso que termina en {case_last4} vence hoy, "
        "{due_date}. Responda PAGAR para agregar una tarjeta y pagar por texto. "
        "Responda STOP para darse de baja."
    ),
    "overdue": (
        "{agency}: Su pago de {amount} del caso que termina en {case_last4}, con vencimiento el "
        "{due_date}, sigue pendiente. Responda PAGAR para pagar {amount} con su tarjeta "
        "terminada en {last4}. Responda STOP para darse de baja."
    ),
    "overdue_no_card": (
        "{agency}: Su pago de {amount} del caso que termina en {case_last4}, con vencimiento el "
        "{due_date}, sigue pendiente. Responda PAGAR para agregar una tarjeta y pagar por "
        "texto. Responda STOP para darse de baja."
    ),
    "appt_reminder": (
        "{agency}: Le recordamos que tiene {kind} el {when} en {location}. "
        "Responda CITA para ver detalles o STOP para darse de baja."
    ),
    "appt_reminder_video": (
        "{agency}: Le recordamos que tiene {kind} el {when}. Enlace de video: {video_link} "
        "Responda STOP para darse de baja."
    ),
    "appt_reminder_both": (
        "{agency}: Le recordamos que tiene {kind} el {when} en {location}, o por video: "
        "{video_link} Responda STOP para darse de baja."
    ),
    "appt_reminder_no_place": (
        "{agency}: Le recordamos que tiene {kind} el {when}. "
        "Para detalles, llame al {agency_phone}. Responda STOP para darse de baja."
    ),
    "appt_canceled": (
        "{agency}: Ya no tiene {kind} el {when}: se ha cancelado. "
        "Si tiene preguntas, llame al {agency_phone}. Responda STOP para darse de baja."
    ),
    "appt_moved": (
        "{agency}: Su cita tiene nueva hora. Ahora tiene {kind} el {when}. "
        "Responda CITA para ver detalles o STOP para darse de baja."
    ),
    "staff_reply": "{agency}: {text}",
    # Páginas web para el pagador (tarjeta y aprobación de pagos); fragmentos, nunca por texto.
    "page.lang_switch": "English",
    "page.footer": "{agency}. ¿Preguntas? Llame al {agency_phone}.",
    "page.working": "Un momento...",
    "page.card_title": "Agregar una tarjeta",
    "page.card_intro": (
        "Guarde una tarjeta de débito o crédito para el caso que termina en {case_last4}. "
        "Solo le hacemos un cargo cuando usted confirma un pago por texto."
    ),
    "page.card_replaces": "Esta tarjeta reemplaza su tarjeta {brand} terminada en {last4}.",
    "page.card_details": "Datos de la tarjeta",
    "page.card_number": "Número de tarjeta",
    "page.card_exp_month": "Mes de vencimiento (MM)",
    "page.card_exp_year": "Año de vencimiento (AA)",
    "page.card_cvc": "Código de seguridad (CVC)",
    "page.card_save": "Guardar tarjeta",
    "page.card_sandbox_note": (
        "Modo de prueba: no se hacen cargos a tarjetas reales. Use una de estas tarjetas de prueba:"
    ),
    "page.card_saved_title": "Tarjeta guardada",
    "page.card_saved": (
        "Su tarjeta {brand} terminada en {last4} quedó guardada. Para pagar, responda PAGAR "
        "a nuestro mensaje."
    ),
    "page.card_error.invalid_number": "El número de tarjeta no es válido. Por favor, revíselo.",
    "page.card_error.not_test_card": (
        "En modo de prueba solo funcionan los números de tarjeta de prueba de abajo."
    ),
    "page.card_error.invalid_expiry_month": "El mes de vencimiento no es válido.",
    "page.card_error.invalid_expiry_year": "La fecha de vencimiento no es válida o ya pasó.",
    "page.card_error.invalid_cvc": "El código de seguridad no es válido.",
    "page.card_error.setup_incomplete": "Su tarjeta no se guardó. Por favor, ingrésela de nuevo.",
    "page.card_error.other": "No pudimos guardar la tarjeta. Por favor, intente de nuevo.",
    "page.link_title": "Este enlace no funciona",
    "page.link_expired": (
        "Este enlace venció o ya se usó. Para recibir uno nuevo, responda TARJETA a nuestro "
        "mensaje o llame al {agency_phone}."
    ),
    "page.link_invalid": (
        "Este enlace no es válido. Abra el enlace tal como aparece en nuestro mensaje, "
        "o llame al {agency_phone}."
    ),
    "page.auth_title": "Apruebe su pago",
    "page.auth_intro": (
        "Su banco le pide que apruebe el pago de {amount} con su tarjeta terminada en {last4}. "
        "No le cobramos nada hasta que lo apruebe."
    ),
    "page.auth_button": "Aprobar el pago",
    "page.auth_sandbox_note": "Modo de prueba: este botón aprueba el pago como lo haría su banco.",
    "page.auth_done_title": "Pago aprobado",
    "page.auth_done": (
        "Gracias. Su pago de {amount} se completó. Le enviaremos el recibo por mensaje de texto."
    ),
    "page.auth_failed_title": "Pago no aprobado",
    "page.auth_failed": (
        "Su banco no aprobó el pago de {amount} y no le cobramos nada. Responda PAGAR a "
        "nuestro mensaje para intentarlo de nuevo, o llame al {agency_phone}."
    ),
    "page.auth_closed": "Este pago ya no necesita aprobación. No tiene que hacer nada más.",
    "page.error_title": "Intente de nuevo",
    "page.form_refused": (
        "No pudimos verificar esta página, así que no se guardó ni se cobró nada. Abra de "
        "nuevo el enlace de nuestro mensaje. Si vuelve a pasar, llame al {agency_phone}."
    ),
    "page.try_later": (
        "No pudimos comunicarnos con el procesador de pagos, así que no se cobró ni se guardó "
        "nada. Por favor, intente de nuevo en unos minutos."
    ),
}

_MONTHS = (
    "ene.", "feb.", "mar.", "abr.", "may.", "jun.", "jul.", "ago.", "sept.", "oct.", "nov.", "dic."
)  # fmt: skip


def format_date(day: date) -> str:
    """'1 de dic.'."""
    return f"{day.day} de {_MONTHS[day.month - 1]}"


def format_time(moment: time) -> str:
    """'4:30 p.m.', the way the agencies' own Spanish notices write it."""
    return f"{moment.hour % 12 or 12}:{moment.minute:02d} {'a.m.' if moment.hour < 12 else 'p.m.'}"


def format_when(moment: datetime) -> str:
    """'1 de dic. a las 4:30 p.m.'; one o'clock takes 'a la' (moment in local time).

    No weekday: 'sábado' has an á, which is not GSM-7 and would make a Saturday text UCS-2,
    too long for two segments.
    """
    at = "a la" if moment.hour % 12 == 1 else "a las"
    return f"{format_date(moment)} {at} {format_time(moment.time())}"
